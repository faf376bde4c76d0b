"""The lexical side of hybrid retrieval: what Milvus' BM25 function indexes for a title.

Chinese titles have no spaces, and a word segmenter splits brand spellings unpredictably; the
character n-grams of each cleaned, lower-cased word (1- and 2-grams by default) are the tokens,
written space-separated so any whitespace-splitting analyzer (Lite's ``standard``, a server's
``whitespace``) indexes exactly them. Measured on the real dev titles (dev as both, exact
metrics): BM25 over 1-2-grams 0.917 mAP@10, 1-3-grams 0.912, Milvus' jieba analyzer on the raw
title 0.904, character 1-3-gram TF-IDF 0.900.
"""

from __future__ import annotations

from egecmp_ray.data.clean import clean_title


def lexical_text(title: str | None, max_ngram: int = 2) -> str:
    """``'SK-II 神仙水'`` -> ``'s k i ... sk ki ii 神 仙 水 神仙 仙水'`` (per word, 1..max_ngram)."""
    grams: list[str] = []
    for word in clean_title(title or "").lower().split():
        for n in range(1, max_ngram + 1):
            grams += [word[i:i + n] for i in range(len(word) - n + 1)]
    return " ".join(grams)
