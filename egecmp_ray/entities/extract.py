"""Entity extraction: jieba segmentation + POS tags, filtered by stop lists kept as data files.

Kept: brand-, category-, series- and modifier-like words (nouns, English/alphanumeric tokens,
noun-verbs, adjectives, and new words jieba's HMM finds outside its dictionary). Dropped: numbers, units and sizes (``50ml``), model numbers, marketing
and place words, and generic packaging words. An extractor is any ``title -> list[str]``
function; ``load_extractor("pkg.module:function")`` plugs in another one.
"""

from __future__ import annotations

import functools
import importlib
import re
from importlib import resources
from typing import Callable, Iterator

from egecmp_ray.entities.clean import has_cjk

Extractor = Callable[[str], list[str]]

# jieba POS tags that can name a product part. eng: latin/alphanumeric runs (AHC, sk2).
KEEP_TAGS = frozenset({"n", "nz", "nr", "nrt", "nrfg", "nt", "ng", "vn", "an", "a", "ad", "eng",
                       "j", "l", "i", "v", "nw"})
_NUMBER_RE = re.compile(r"^[\d.]+$")
_SPACE_RE = re.compile(r"\s+")


@functools.lru_cache(maxsize=None)
def stop_words(name: str) -> frozenset[str]:
    """A stop list from ``entities/resources/<name>.txt`` (lower-cased; '#' comments)."""
    text = resources.files("egecmp_ray.entities").joinpath(f"resources/{name}.txt").read_text("utf-8")
    return frozenset(line.split("#", 1)[0].strip().lower() for line in text.splitlines()
                     if line.split("#", 1)[0].strip())


@functools.lru_cache(maxsize=1)
def _size_re() -> re.Pattern[str]:
    units = sorted(stop_words("units"), key=len, reverse=True)
    return re.compile(r"^[\d.]+(" + "|".join(map(re.escape, units)) + r")?$")


def is_noise(word: str) -> bool:
    """Numbers, sizes, model numbers and stop-listed words."""
    if _NUMBER_RE.match(word) or _size_re().match(word):
        return True
    digits = sum(c.isdigit() for c in word)
    if digits >= 3 or (digits >= 2 and digits >= len(word) - 1):  # 1234, x100, 24k; not sk2
        return True
    return any(word in stop_words(name) for name in ("marketing", "places", "units", "generic"))


@functools.lru_cache(maxsize=1)
def _jieba():
    """(segmenter, word -> POS tag table). Segmenting with jieba's HMM finds new words (brands
    like 百雀羚); tags come from its dictionary. This is several times faster than
    ``jieba.posseg``'s joint POS Viterbi, which dominated the text path."""
    import logging

    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()
    # Stop words go into the dictionary so they segment whole (包邮, not 包/邮) and drop out.
    for name in ("marketing", "places", "generic"):
        for word in stop_words(name):
            if has_cjk(word):
                tokenizer.add_word(word, freq=100_000)
    return tokenizer, jieba.posseg.POSTokenizer(tokenizer).word_tag_tab


def _tag(word: str, table: dict[str, str]) -> str:
    tag = table.get(word)
    if tag is not None:
        return tag
    if word.isascii():
        return "m" if _NUMBER_RE.match(word) else ("eng" if word.isalnum() else "x")
    if has_cjk(word):
        return "nw"  # a word jieba's HMM found that its dictionary lacks: a new word, often a brand
    return "x"  # symbols: ▲, ㊣


_ALNUM_PIECE_RE = re.compile(r"[a-z]+|[0-9.]+[a-z]*")


def _words(title: str) -> Iterator[tuple[str, str]]:
    """(lower-cased word, POS tag); alphanumeric runs holding a number are split at it, so
    ``ahc24k`` gives the brand ``ahc`` and the size ``24k`` (``sk2``, ``b5`` stay whole)."""
    segmenter, table = _jieba()
    for raw in segmenter.cut(title, HMM=True):
        word = raw.strip().lower()
        tag = _tag(word, table)
        if tag == "eng" and sum(c.isdigit() for c in word) >= 2:
            for piece in _ALNUM_PIECE_RE.findall(word):
                yield piece, ("m" if piece[0].isdigit() else "eng")
        else:
            yield word, tag


def jieba_entities(title: str, max_entities: int = 15) -> list[str]:
    """Entities of a cleaned title, lower-cased, de-duplicated in order of appearance."""
    out: list[str] = []
    seen: set[str] = set()
    for word, tag in _words(title):
        if not word or tag not in KEEP_TAGS or word in seen:
            continue
        if tag in ("v", "a", "ad") and (len(word) < 2 or not has_cjk(word)):
            continue  # single-character verbs/adjectives are grammar, not product words
        if tag == "eng" and len(word) < 2:
            continue  # a lone latin letter
        if is_noise(word):
            continue
        seen.add(word)
        out.append(word)
        if len(out) >= max_entities:
            break
    return out


def load_extractor(spec: str, max_entities: int = 15) -> Extractor:
    """``"jieba"`` or ``"package.module:function"`` (a ``title -> list[str]`` callable)."""
    if spec == "jieba":
        return functools.partial(jieba_entities, max_entities=max_entities)
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"extractor {spec!r}: expected 'jieba' or 'module.path:function'")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise ValueError(f"extractor {spec!r} is not callable")

    def bounded(title: str) -> list[str]:
        # Inner tabs/newlines would break entities.tsv (one entity a line): fold them.
        ents = (_SPACE_RE.sub(" ", str(e)).strip().lower() for e in fn(title))
        return list(dict.fromkeys(e for e in ents if e))[:max_entities]

    return bounded
