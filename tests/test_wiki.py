"""dart.data.wiki: the hand-written wiki-markup stripper, and the real enwiki excerpt from gensim's test data."""
from __future__ import annotations

import statistics

import pytest

from dart.data.wiki import WikiArticle, strip_markup, summarization_pairs, wiki_articles
from dart.errors import UnavailableError

# --- strip_markup on hand-written snippets ---------------------------------------------------------------------


def test_nested_templates_are_dropped_whole():
    assert strip_markup("Text<!-- hidden [[x]] -->more. {{a|{{b|{{c}}}}}}end.") == "Textmore. end."
    wikitext = "{{Infobox person|name=Jane|spouse={{marriage|John|{{date|1920}}}}}}'''Jane Doe''' was a writer."
    assert strip_markup(wikitext) == "Jane Doe was a writer."


def test_prose_templates_keep_their_text():
    assert strip_markup("He ran {{convert|5|km|mi}} in {{lang|fr|Paris}}.") == "He ran 5 km in Paris."
    assert strip_markup("Born {{birth date|1905|02|02}}.") == "Born 2 February 1905."


def test_unbalanced_braces_do_not_swallow_the_text():
    assert strip_markup("Stray {{ opener, then a {{template}} and more.") == "Stray opener, then a and more."
    assert strip_markup("A stray }} closer.") == "A stray closer."


def test_file_link_with_nested_links_in_its_caption_is_dropped():
    wikitext = (
        "[[File:Example.jpg|thumb|200px|A caption with a [[Nested link|nested link]] and [[another]].]]\n"
        "Text after [[Image:x.png|left|a {{lang|ja|[[wikt:気|気]]}} glyph]]the image."
    )
    assert strip_markup(wikitext) == "Text after the image."


def test_internal_links():
    wikitext = "The [[political philosophy|philosophy]] of [[anarchism]]s and [[Paris, Texas|]]."
    assert strip_markup(wikitext) == "The philosophy of anarchisms and Paris."


def test_category_and_interlanguage_links_go_but_colon_links_stay():
    wikitext = "[[Category:Philosophy]]\n[[de:Anarchismus]]\nKept [[:Category:Philosophy|the category]]."
    assert strip_markup(wikitext) == "Kept the category."


def test_external_links():
    assert strip_markup("A [http://example.org example site] and [http://bare.org].") == "A example site and."


def test_refs_are_removed():
    wikitext = 'Fact one.<ref name="a">{{cite web|url=http://x.org|title=X}}</ref> Fact two.<ref name="b"/> Done.'
    assert strip_markup(wikitext) == "Fact one. Fact two. Done."


def test_bold_and_italic():
    assert strip_markup("'''Bold''' and ''italic'' and '''''both'''''.") == "Bold and italic and both."


def test_headings_lists_and_end_sections():
    wikitext = (
        "Lead.\n\n== History ==\nOld times.\n=== Early ===\n* Very old.\n# Older.\n\n\n\n"
        "== See also ==\n* [[Other]]\n== Legacy ==\nDropped too.\n== References ==\n{{reflist}}"
    )
    assert strip_markup(wikitext) == "Lead.\n\nHistory\nOld times.\n\nEarly\nVery old.\nOlder."


def test_tables_are_dropped():
    wikitext = 'Before.\n{| class="wikitable"\n|-\n! Name !! Value\n|-\n| a || {{convert|1|km}}\n|}\nAfter.'
    assert strip_markup(wikitext) == "Before.\n\nAfter."


def test_html_tags_and_entities():
    assert strip_markup("Caf&eacute; &amp; bar&nbsp;&ndash; 5&nbsp;km &lt;tag&gt;") == "Café & bar – 5 km <tag>"
    assert strip_markup("x <math>a^2</math> y <small>small text</small> z<br/>w") == "x y small text z w"


def test_emptied_parentheses_are_tidied():
    wikitext = "Aristotle ({{IPAc-en|ˈ|æ|r}}; {{lang-grc|Ἀριστοτέλης}}; 384–322 BC) was. X ({{IPA|x}}) y."
    assert strip_markup(wikitext) == "Aristotle (Ἀριστοτέλης; 384–322 BC) was. X y."


# --- the real dump -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def articles() -> tuple[WikiArticle, ...]:
    try:
        return wiki_articles()
    except UnavailableError as e:  # gensim (the data's carrier) is not installed
        pytest.skip(str(e))


def test_real_articles(articles):
    assert 60 <= len(articles) <= 120
    titles = [a.title for a in articles]
    assert {"Anarchism", "Autism", "Aristotle"} <= set(titles)
    assert titles[:3] == ["Anarchism", "Autism", "Albedo"]  # file order
    assert "AccessibleComputing" not in titles  # a redirect
    assert len(set(titles)) == len(titles)
    for a in articles:
        assert len(a.lead.split()) >= 30 and len(a.body.split()) >= 200, a.title
        assert a.text == a.lead + "\n\n" + a.body
        for markup in ("{{", "}}", "[[", "]]", "<ref", "'''", "''", "<!--", "\n\n\n", "[http", "&nbsp;"):
            assert markup not in a.text, (a.title, markup)
    assert statistics.median(len(a.body.split()) for a in articles) > 1000


def test_anarchism(articles):
    anarchism = next(a for a in articles if a.title == "Anarchism")
    assert anarchism.lead.startswith(
        "Anarchism is a political philosophy that advocates self-governed societies based on voluntary institutions."
        " These are often described as stateless societies,"
    )
    assert anarchism.body.startswith("Etymology and terminology\nThe term anarchism is a compound word")
    assert "\nSee also" not in anarchism.body and "\nReferences" not in anarchism.body


def test_aristotle_lead_keeps_its_greek_name(articles):
    aristotle = next(a for a in articles if a.title == "Aristotle")
    assert aristotle.lead.startswith("Aristotle (Ἀριστοτέλης, Aristotélēs; 384–322 BC) was a Greek philosopher")


def test_summarization_pairs(articles):
    pairs = summarization_pairs()
    assert 60 <= len(pairs) <= len(articles)
    assert pairs[0]["id"] == "Anarchism"
    for p in pairs:
        assert set(p) == {"id", "document", "summary"}
        assert len(p["document"].split()) > len(p["summary"].split()) >= 30, p["id"]
    assert len(summarization_pairs(min_lead_words=300)) < len(pairs)
