"""Real English Wikipedia articles, offline: gensim's bundled enwiki excerpt, parsed and stripped to plain text.

The source is `enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2` from gensim's test data (a
real MediaWiki XML export of 2016: 206 pages, about half of them redirects). It is read with `bz2` and
`xml.etree.ElementTree.iterparse`; gensim itself is never imported.

`strip_markup` is a small hand-written wiki-markup stripper (no mwparserfromhell, no new dependency). It is not a
MediaWiki renderer: templates are dropped rather than expanded (a handful of inline ones that only wrap text, such
as {{lang}} or {{nowrap}}, keep that text), tables, galleries and maths are dropped, and links become their text.
That is enough to give real, fluent article prose for perplexity, fidelity and summarization prompts.

`summarization_pairs` turns each article into (body -> lead section) pairs: an offline stand-in for summarization
data sets.
"""
from __future__ import annotations

import bz2
import functools
import html
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable

from dart.data.gensim_data import gensim_test_data

WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

MIN_LEAD_WORDS = 30
MIN_BODY_WORDS = 200

# Sections that hold apparatus rather than prose; the first of them and everything after it are dropped.
END_SECTIONS = frozenset(
    s.lower()
    for s in (
        "See also", "References", "Notes", "Further reading", "External links", "Bibliography", "Sources",
        "Footnotes", "Citations",
        # common spellings of the same sections
        "Notes and references", "References and notes", "Works cited", "Further reading and external links",
    )
)


@dataclass(frozen=True)
class WikiArticle:
    title: str
    lead: str  # stripped text before the first heading
    body: str  # stripped text from the first heading on, headings kept as their own lines

    @property
    def text(self) -> str:
        """The whole article as plain text."""
        return self.lead + "\n\n" + self.body


# ---------------------------------------------------------------------------------------------------------------
# Nesting: templates {{...}}, tables {|...|} and links [[...]] nest, so they are matched with a depth counter over
# their opening/closing tokens, never with one regex.
# ---------------------------------------------------------------------------------------------------------------


def _replace_nested(text: str, tokens: re.Pattern, opener: str, render: Callable[[str], str]) -> str:
    """Replace each outermost balanced construct by `render(inner)`.

    `tokens` matches the opening and the closing token; a match whose text (stripped) equals `opener` opens. Inner
    constructs are left inside `inner` for `render` to deal with (it usually recurses). A closer with nothing open is
    dropped; an opener that is never closed is dropped and the text after it processed again, so a stray "{{" does
    not swallow the rest of the article.
    """
    out: list[str] = []
    depth = 0
    pos = 0  # start of the text not yet copied to out
    inner_start = 0  # where the inner text of the current outermost construct starts
    for m in tokens.finditer(text):
        if m.group().strip() == opener:
            if depth == 0:
                out.append(text[pos:m.start()])
                inner_start = m.end()
            depth += 1
        elif depth == 0:  # a stray closer
            out.append(text[pos:m.start()])
            pos = m.end()
        else:
            depth -= 1
            if depth == 0:
                out.append(render(text[inner_start:m.start()]))
                pos = m.end()
    if depth:  # unclosed: drop the opener only, keep (and process) what follows it
        out.append(_replace_nested(text[inner_start:], tokens, opener, render))
    else:
        out.append(text[pos:])
    return "".join(out)


# --- templates ---------------------------------------------------------------------------------------------------

_TEMPLATE_TOKENS = re.compile(r"\{\{|\}\}")

# Templates are dropped (infoboxes, citations, hatnotes, navboxes, pronunciations, ...), except a few inline ones
# that only wrap prose or a number: those keep the given (1-based) positional argument, or are rendered below.
_TEXT_TEMPLATES = {
    "lang": 2, "nowrap": 1, "nobr": 1, "small": 1, "smaller": 1, "big": 1, "em": 1, "strong": 1, "sic": 1,
    "nihongo": 1, "keypress": 1, "math": 1, "mvar": 1, "not a typo": 1, "visible anchor": 1, "vanchor": 1,
    "nts": 1, "val": 1, "flag": 1, "flagcountry": 1, "sc": 1, "smallcaps": 1, "small caps": 1, "abbr": 1,
}
_LANG_X = re.compile(r"lang-[a-z-]+")  # {{lang-fr|texte}} -> texte
_DATE_TEMPLATES = frozenset(
    {"birth date", "death date", "birth date and age", "death date and age", "start date", "end date", "dob"}
)
_MONTHS = ("January February March April May June July August September October November December").split()
_FIXED = {"'s": "'s", "nbsp": " ", "snd": " – ", "spaced ndash": " – ", "ndash": "–", "mdash": "—", "·": " · "}


def _split_args(inner: str) -> list[str]:
    """Split a template's inside on the "|" that are not inside a [[link|label]]."""
    parts, depth, start = [], 0, 0
    for m in re.finditer(r"\[\[|\]\]|\|", inner):
        if m.group() == "[[":
            depth += 1
        elif m.group() == "]]":
            depth = max(depth - 1, 0)
        elif depth == 0:
            parts.append(inner[start:m.start()])
            start = m.end()
    parts.append(inner[start:])
    return parts


def _render_date(args: list[str]) -> str:
    """{{birth date|1905|02|02}} -> 2 February 1905 (the first year/month/day given)."""
    nums = [a.strip() for a in args[:3]]
    if len(nums) == 3 and all(n.isdigit() for n in nums) and 1 <= int(nums[1]) <= 12:
        return f"{int(nums[2])} {_MONTHS[int(nums[1]) - 1]} {nums[0]}"
    return nums[0] if nums and nums[0].isdigit() else ""


def _render_template(inner: str) -> str:
    inner = _replace_nested(inner, _TEMPLATE_TOKENS, "{{", _render_template)  # nested templates first
    parts = _split_args(inner)
    name = parts[0].strip().lower().replace("_", " ")
    args = [p.strip() for p in parts[1:] if "=" not in p]  # positional arguments only
    named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    named = {k.strip().lower(): v.strip() for k, v in named.items()}
    if name in _FIXED:
        return _FIXED[name]
    if _LANG_X.fullmatch(name):
        return args[0] if args else ""
    if name in _TEXT_TEMPLATES:
        i = _TEXT_TEMPLATES[name] - 1
        return args[i] if len(args) > i else ""
    if name in ("transl", "transliteration"):  # {{transl|ar|DIN|text}}: the text is the last argument
        return args[-1] if len(args) >= 2 else ""
    if name in ("convert", "cvt") and len(args) >= 2:  # {{convert|5|km|mi}} -> 5 km
        return f"{args[0]} {args[1]}"
    if name in _DATE_TEMPLATES:
        return _render_date(args)
    if name == "oldstyledate" and len(args) >= 2:  # {{OldStyleDate|February 2|1905|January 20}}
        return f"{args[0]}, {args[1]}"
    if name in ("circa", "c."):  # {{circa|292}} -> c. 292
        return "c. " + args[0] if args else "c."
    if name == "as of" and args:
        return "As of " + " ".join(args[:1])
    if name == "chem":  # {{chem|H|2|O}} -> H2O
        return "".join(args)
    if name in ("quote", "quotation", "blockquote", "cquote"):  # block quotations are prose: keep the quote
        text = named.get("text") or named.get("quote") or (args[0] if args else "")
        return f"\n{text}\n"
    return ""


def _drop_templates(text: str) -> str:
    return _replace_nested(text, _TEMPLATE_TOKENS, "{{", _render_template)


# --- tables ------------------------------------------------------------------------------------------------------

# "{|" and "|}" only count at the start of a line (after optional blanks), as in MediaWiki; run after templates so
# the "|}}" ending of a template cannot be mistaken for a table's end.
_TABLE_TOKENS = re.compile(r"^[ \t:]*\{\||^[ \t]*\|\}", re.M)


def _drop_tables(text: str) -> str:
    return _replace_nested(text, _TABLE_TOKENS, "{|", lambda inner: "")


# --- links -------------------------------------------------------------------------------------------------------

_LINK_TOKENS = re.compile(r"\[\[|\]\]")
_DROP_NAMESPACES = frozenset({"file", "image", "media", "category"})
_INTERWIKI = frozenset(
    {"wikt", "wiktionary", "s", "wikisource", "q", "wikiquote", "b", "wikibooks", "n", "wikinews", "v",
     "wikiversity", "w", "wikipedia", "commons", "meta", "species", "wikispecies", "voy", "wikivoyage", "d"}
)
_LANGUAGE_PREFIX = re.compile(r"[a-z]{2,3}(-[a-z]+)*")  # [[de:Anarchismus]]: an interlanguage link


def _render_link(inner: str) -> str:
    """[[target|label]] -> label, [[target]] -> target; File/Image/Category and interlanguage links -> ""."""
    target, pipe, label = inner.partition("|")
    target = target.strip()
    colon_prefixed = target.startswith(":")  # [[:Category:X]] is a plain link to the category page
    target = target.lstrip(":")
    prefix, has_ns, rest = target.partition(":")
    if has_ns and not colon_prefixed:
        if prefix.strip().lower() in _DROP_NAMESPACES:
            return ""  # its caption, nested links and all, goes with it
        if _LANGUAGE_PREFIX.fullmatch(prefix) and prefix not in _INTERWIKI and not pipe:
            return ""
    if pipe:
        label = _replace_nested(label, _LINK_TOKENS, "[[", _render_link)  # links nested in a label
        if label.strip():
            return label
        # the "pipe trick": [[Paris, Texas|]] -> Paris, [[Pipe (computing)|]] -> Pipe
        shown = rest if has_ns else target
        return re.sub(r"\s*\(.*?\)\s*$", "", shown).split(",")[0].strip()
    if has_ns and prefix.strip().lower() in _INTERWIKI:
        return rest.strip()
    return target.lstrip("#")  # [[#Section]] -> Section


def _replace_links(text: str) -> str:
    return _replace_nested(text, _LINK_TOKENS, "[[", _render_link)


# [http://example.org label] -> label, [http://example.org] -> "" (MediaWiki shows "[1]"). The label may not hold
# brackets, so a label with an internal link inside is caught by the second pass, after internal links are gone.
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:|mailto:|//)[^\s\[\]]*(?:[ \t]+([^\[\]\n]*))?\]", re.I)


def _replace_external_links(text: str) -> str:
    return _EXTERNAL_LINK.sub(lambda m: (m.group(1) or "").strip(), text)


# --- HTML-like tags ----------------------------------------------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)  # an unclosed comment runs to the end, as in MediaWiki
_REF_SELF_CLOSING = re.compile(r"<ref\b[^>]*/\s*>", re.I)
_REF = re.compile(r"<ref\b[^>]*>.*?</ref\s*>", re.I | re.S)
# Tags whose content is not prose: dropped with their content.
_DROP_WITH_CONTENT = re.compile(
    r"<(ref|references|math|ce|chem|gallery|table|timeline|imagemap|score|hiero|graph|syntaxhighlight|source|"
    r"templatedata|mapframe|maplink)\b[^>]*>.*?</\1\s*>",
    re.I | re.S,
)
_SELF_CLOSING_DROP = re.compile(r"<(references|gallery)\b[^>]*/\s*>", re.I)
_BR = re.compile(r"<br\s*/?\s*>", re.I)
_ANY_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^<>]*>")  # other tags go, their inner text stays


# --- lines -------------------------------------------------------------------------------------------------------

_HEADING = re.compile(r"^(={1,6})[ \t]*(.+?)[ \t]*\1[ \t]*$", re.M)
_MARK = "\x00"  # heading lines become "\x00<level>\x00<text>" until the end; the input never holds \x00
_LIST_MARKS = re.compile(r"^[ \t]*[*#:;]+[ \t]*", re.M)  # bullets, numbering, indents, definition terms
_QUOTES = re.compile(r"'{2,}")  # '' italic, ''' bold, ''''' both
_MAGIC_WORDS = re.compile(r"__[A-Z]+__")  # __NOTOC__, __TOC__, ...
_RULE = re.compile(r"^-{4,}[ \t]*$", re.M)
# Parentheses emptied where a template stood: "Aristotle (; Greek ...)" -> "Aristotle (Greek ...)", "( )" -> "".
_EMPTY_PARENS = re.compile(r"[ \t]*\([\s,;:.]*\)")
_PAREN_OPEN_JUNK = re.compile(r"\([\s,;:]+")
_PAREN_CLOSE_JUNK = re.compile(r"[\s,;:]+\)")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+(?=[,.;:!?)])")
_SPACES = re.compile(r"[ \t]{2,}")
_PUNCT_LINE = re.compile(r"^[ \t,.;:]+$", re.M)  # what is left of a line that was a displayed formula
_BLANK_RUNS = re.compile(r"\n{3,}")


def _clean(wikitext: str) -> str:
    """Everything but section handling: plain text with heading lines marked (see _MARK)."""
    text = wikitext.replace("\r\n", "\n").replace(_MARK, "")
    # 1. comments and refs first: they can hold anything, including unbalanced markup
    text = _COMMENT.sub("", text)
    text = _REF_SELF_CLOSING.sub("", text)
    text = _REF.sub("", text)
    text = _DROP_WITH_CONTENT.sub("", text)
    text = _SELF_CLOSING_DROP.sub("", text)
    # 2. templates, then tables (nested, counted)
    text = _drop_templates(text)
    text = _drop_tables(text)
    # 3. links: external (bracket-free labels), internal (nested, counted), then external again
    text = _replace_external_links(text)
    text = _replace_links(text)
    text = _replace_external_links(text)
    # 4. remaining tags keep their text; <br> is a space
    text = _BR.sub(" ", text)
    text = _ANY_TAG.sub("", text)
    # 5. inline formatting and magic words
    text = _QUOTES.sub("", text)
    text = _MAGIC_WORDS.sub("", text)
    text = _RULE.sub("", text)
    # 6. line structure: headings to marked lines, list marks off
    text = _HEADING.sub(lambda m: f"\n{_MARK}{len(m.group(1))}{_MARK}{m.group(2).strip()}\n", text)
    text = _LIST_MARKS.sub("", text)
    # 7. entities last (the XML layer already decoded one level; these are the wikitext's own &nbsp; &ndash; ...)
    text = html.unescape(text).replace("\xa0", " ")
    text = _EMPTY_PARENS.sub("", text)
    text = _PAREN_OPEN_JUNK.sub("(", text)
    text = _PAREN_CLOSE_JUNK.sub(")", text)
    # 8. spacing
    text = _SPACE_BEFORE_PUNCT.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _PUNCT_LINE.sub("", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip()


def _sections(wikitext: str) -> tuple[str, list[tuple[int, str, str]]]:
    """(lead, [(level, heading, text), ...]), cut at the first apparatus section (References, See also, ...)."""
    chunks = re.split(rf"^{_MARK}(\d){_MARK}(.*)$", _clean(wikitext), flags=re.M)
    lead, rest = chunks[0].strip(), chunks[1:]
    sections = []
    for i in range(0, len(rest), 3):
        level, heading, text = int(rest[i]), rest[i + 1].strip(), rest[i + 2].strip()
        if heading.lower().rstrip(":.") in END_SECTIONS:
            break
        sections.append((level, heading, text))
    # a heading with no text and no subsection under it (its content was a table or gallery) goes too
    kept: list[tuple[int, str, str]] = []
    for level, heading, text in reversed(sections):
        if text or (kept and kept[-1][0] > level):
            kept.append((level, heading, text))
    return lead, kept[::-1]


def _join(sections: list[tuple[int, str, str]]) -> str:
    return "\n\n".join(f"{heading}\n{text}" if text else heading for _, heading, text in sections)


def strip_markup(wikitext: str) -> str:
    """Wikitext -> plain text: markup removed, headings as their own lines, apparatus sections dropped."""
    lead, sections = _sections(wikitext)
    return "\n\n".join(part for part in (lead, _join(sections)) if part)


# ---------------------------------------------------------------------------------------------------------------
# The dump
# ---------------------------------------------------------------------------------------------------------------

_REDIRECT = re.compile(r"\s*#redirect", re.I)
_DISAMBIGUATION = re.compile(r"\{\{\s*(disambig|dab|disamb|hndis|geodis|set index|surname|given name)\b", re.I)


def _words(text: str) -> int:
    return len(text.split())


def _pages(path) -> "list[tuple[str, str]]":
    """(title, wikitext) of the namespace-0 pages that are not redirects, in file order."""
    pages = []
    with bz2.open(path, "rb") as f:
        ns = ""  # the export's XML namespace, "{http://www.mediawiki.org/xml/export-0.10/}", read off the root
        for event, elem in ET.iterparse(f, events=("start", "end")):
            if event == "start":
                if not ns and elem.tag.startswith("{"):
                    ns = elem.tag[: elem.tag.index("}") + 1]
                continue
            if elem.tag != f"{ns}page":
                continue
            title = elem.findtext(f"{ns}title") or ""
            text = elem.findtext(f"{ns}revision/{ns}text") or ""
            if (
                elem.findtext(f"{ns}ns") == "0"
                and elem.find(f"{ns}redirect") is None
                and not _REDIRECT.match(text)
            ):
                pages.append((title, text))
            elem.clear()  # keep memory flat
    return pages


@functools.lru_cache(maxsize=1)
def wiki_articles() -> tuple[WikiArticle, ...]:
    """The real articles of the excerpt (about 90), in file order: namespace 0, no redirects, no disambiguation
    pages, lead >= 30 words and body >= 200 words after stripping."""
    articles = []
    for title, wikitext in _pages(gensim_test_data() / WIKI_DUMP):
        if title.endswith("(disambiguation)") or _DISAMBIGUATION.search(wikitext):
            continue
        lead, sections = _sections(wikitext)
        body = _join(sections)
        if _words(lead) < MIN_LEAD_WORDS or _words(body) < MIN_BODY_WORDS:
            continue
        articles.append(WikiArticle(title=title, lead=lead, body=body))
    return tuple(articles)


def summarization_pairs(min_lead_words: int = MIN_LEAD_WORDS) -> list[dict]:
    """{"id": title, "document": body, "summary": lead} for each article whose lead has at least `min_lead_words`
    words (every article already has 30) and is shorter than its body."""
    return [
        {"id": a.title, "document": a.body, "summary": a.lead}
        for a in wiki_articles()
        if _words(a.lead) >= min_lead_words and _words(a.lead) < _words(a.body)
    ]
