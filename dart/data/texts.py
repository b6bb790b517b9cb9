"""Real text sources for perplexity, fidelity, summarization and drift prompts.

Offline (installed by setup.sh from PyPI, never imported as code):
- `news`: 300 real ABC news articles (gensim's lee_background.cor), one per line.
- `wiki`: 90 real English Wikipedia articles (gensim's enwiki excerpt), markup stripped; see dart.data.wiki.
- `calibration` (calibration only, never evaluated): 50 other ABC news articles (gensim's lee.cor, the Lee
  corpus' test documents, not in lee_background.cor) and 13 encyclopedic paragraphs on New York and Berlin
  (para2para_text1/2.txt, not in the enwiki excerpt): about 10.8k SmolLM2 tokens sharing no document and no
  8-word sequence with the evaluation texts (tests/test_baselines.py checks it).
Online only: `wikitext2` (the Hugging Face `wikitext-2-raw-v1` test split), which fails with a clear message
where the hub cannot be reached.
"""
from __future__ import annotations

import functools

from dart.data.gensim_data import gensim_test_data
from dart.errors import UnavailableError, choice_error


@functools.lru_cache(maxsize=1)
def news_articles() -> tuple[str, ...]:
    """The 300 ABC news articles, in file order."""
    text = (gensim_test_data() / "lee_background.cor").read_text(encoding="utf-8", errors="replace")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def news_text() -> str:
    """All news articles as one text, one article per line (the perplexity text)."""
    return "\n".join(news_articles())


@functools.lru_cache(maxsize=1)
def calibration_documents() -> tuple[str, ...]:
    """The calibration corpus of the static baselines, one document per line of its files, in file order."""
    docs = []
    for name, encoding in (("lee.cor", "latin-1"), ("para2para_text1.txt", "utf-8"), ("para2para_text2.txt", "utf-8")):
        text = (gensim_test_data() / name).read_text(encoding=encoding)
        docs += [line.strip() for line in text.splitlines() if line.strip()]
    return tuple(docs)


def wiki_documents() -> tuple[str, ...]:
    """The Wikipedia articles of dart.data.wiki, each as one plain text."""
    from dart.data.wiki import wiki_articles

    return tuple(a.text for a in wiki_articles())


def wikitext2_test() -> str:
    """WikiText-2 (raw) test split joined as in the Wanda/SparseGPT protocol; needs the Hugging Face hub."""
    try:
        from datasets import load_dataset

        ds = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as e:  # the hub is unreachable or the data set is not cached
        raise UnavailableError(
            "text=wikitext2 needs the Hugging Face hub (dataset 'wikitext', 'wikitext-2-raw-v1'), which cannot be "
            f"reached or is not cached here ({type(e).__name__}); offline, use text=news or text=wiki"
        ) from None
    return "\n\n".join(ds["text"])


TEXT_SOURCES = {
    "news": lambda: news_text(),
    "wiki": lambda: "\n\n".join(wiki_documents()),
    "wikitext2": lambda: wikitext2_test(),
}

DOC_SOURCES = {
    "news": lambda: news_articles(),
    "wiki": lambda: wiki_documents(),
}


# disjoint from every evaluation text: the only sources a calibrated baseline may use
CALIBRATION_SOURCES = {
    "calibration": lambda: "\n\n".join(calibration_documents()),
}


def load_text(name: str) -> str:
    if name not in TEXT_SOURCES:
        raise choice_error("text", name, TEXT_SOURCES)
    return TEXT_SOURCES[name]()


def load_documents(name: str) -> tuple[str, ...]:
    if name not in DOC_SOURCES:
        raise choice_error("documents", name, DOC_SOURCES)
    return DOC_SOURCES[name]()
