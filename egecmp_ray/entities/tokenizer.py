"""WordPiece tokenizer: built from the corpus's word counts (CJK split per character, as
bert-base-chinese does), or loaded from a local ``vocab.txt`` / ``tokenizer.json`` a user
gives. Never a hub. The word count is a Ray Data groupby, so no process holds the corpus.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]
TOKENIZER_FILE = "tokenizer.json"


def _configure(tok: Tokenizer) -> Tokenizer:
    tok.add_special_tokens(SPECIAL_TOKENS)  # so a literal "[SEP]" in text is the token
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B {SEP}",
        special_tokens=[(CLS, tok.token_to_id(CLS)), (SEP, tok.token_to_id(SEP))])
    tok.decoder = decoders.WordPiece()
    return tok


def _normalizer() -> normalizers.Normalizer:
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=False, lowercase=True)


class _WordChars(dict):
    """``str.translate`` table giving each character what the tokenizer's normalizer and
    pre-tokenizer make of it: removed (control), a space (whitespace), the character between
    spaces (punctuation, CJK), or its lowercase. Both are per-character rules, so
    ``text.translate(table).split(" ")`` gives the tokenizer's words; each character's entry
    is learnt once, from the tokenizer itself (so the two cannot disagree), when first seen.
    Splitting through ``tokenizers`` one string a call was most of the corpus word count:
    a 2,000-row batch's ``word_counts`` took 130 ms that way, 30 ms with the table."""

    def __init__(self) -> None:
        super().__init__()
        self._norm, self._pre = _normalizer(), pre_tokenizers.BertPreTokenizer()

    def __missing__(self, code: int) -> str:
        out = []
        for ch in self._norm.normalize_str(chr(code)):
            words = [w for w, _ in self._pre.pre_tokenize_str(f"a{ch}a")]
            if ch == " " or words == ["a", "a"]:
                out.append(" ")
            elif words == ["a", ch, "a"]:
                out.append(f" {ch} ")
            elif words == [f"a{ch}a"]:
                out.append(ch)
            else:  # no such character today; fail loudly rather than count other words
                raise ValueError(f"U+{code:04X}: the pre-tokenizer split 'a{ch}a' as {words}")
        self[code] = entry = "".join(out)
        return entry


@functools.lru_cache(maxsize=1)
def _word_chars() -> _WordChars:
    return _WordChars()


def split_words(text: str) -> list[str]:
    """What the tokenizer sees as words: CJK characters alone, latin/digit runs, punctuation."""
    return [w for w in text.translate(_word_chars()).split(" ") if w]


def words_of(texts: Iterable[str]) -> list[str]:
    """:func:`split_words` of each text, in order."""
    return [w for t in texts for w in split_words(t)]


def word_counts(batch: dict, columns: Sequence[str] = ("title",)) -> dict:
    """Ray Data fn: this batch's count per word (partial counts for a distributed word count:
    a ``groupby`` sums them). A list value (a row's entities) counts the words of each of its
    strings, as its space-joined string would. Each distinct string is split once (a batch's
    ~8,000 entities are ~700 distinct strings), those seen equally often as one joined text."""
    texts: Counter[str] = Counter()
    for col in columns:
        for value in batch[col]:
            if isinstance(value, str):
                texts[value] += 1
            else:
                texts.update(value)
    by_times: dict[int, list[str]] = {}
    for text, n in texts.items():
        by_times.setdefault(n, []).append(text)
    counts: Counter[str] = Counter()
    for n, group in by_times.items():
        for word, c in Counter(split_words(" ".join(group))).items():
            counts[word] += c * n
    return {"word": np.array(list(counts), dtype=object),
            "count": np.fromiter(counts.values(), dtype=np.int64, count=len(counts))}


def build_wordpiece(word_counts: Iterable[tuple[str, int]], vocab_size: int,
                    min_frequency: int = 2) -> Tokenizer:
    """A deterministic WordPiece vocabulary from word counts, bert-base-chinese style: special
    tokens, every character (and ``##c`` for one seen inside a word) by frequency, then whole
    words by frequency until ``vocab_size``. Ties break by string, so the same
    counts always give the same ids (the `tokenizers` trainer breaks ties at random)."""
    counts = sorted(((w, int(c)) for w, c in word_counts if int(c) >= min_frequency),
                    key=lambda wc: (-wc[1], wc[0]))
    pieces: dict[str, int] = {}  # characters, and "##c" for c inside a word (latin, digits)
    for word, c in counts:
        for i, ch in enumerate(word):
            for piece in ((ch,) if i == 0 else (ch, "##" + ch)):
                pieces[piece] = pieces.get(piece, 0) + c
    vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for piece, _ in sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) < vocab_size:
            vocab.setdefault(piece, len(vocab))
    for word, _ in counts:
        if len(vocab) >= vocab_size:
            break
        if len(word) > 1:
            vocab.setdefault(word, len(vocab))
    return _configure(Tokenizer(models.WordPiece(vocab, unk_token=UNK)))


def train_wordpiece(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """In-process convenience: count words of ``texts``, then :func:`build_wordpiece`."""
    return build_wordpiece(Counter(words_of(texts)).items(), vocab_size, min_frequency)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A ``tokenizer.json`` file, or a directory holding one or a BERT ``vocab.txt``."""
    p = Path(path)
    if p.is_dir():
        if (p / TOKENIZER_FILE).is_file():
            p = p / TOKENIZER_FILE
        elif (p / "vocab.txt").is_file():
            p = p / "vocab.txt"
        else:
            raise FileNotFoundError(f"no {TOKENIZER_FILE} or vocab.txt in {path}")
    if p.name == "vocab.txt":
        vocab = {line.rstrip("\n"): i for i, line in
                 enumerate(p.read_text(encoding="utf-8").splitlines())}
        if UNK not in vocab:
            check_tokenizer(Tokenizer(models.WordPiece(vocab)), str(p))
        return _configure(Tokenizer(models.WordPiece(vocab, unk_token=UNK)))
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    return Tokenizer.from_file(str(p))


def check_tokenizer(tok: Tokenizer, where: str) -> None:
    """A tokenizer the pipeline can use: it must know every special token."""
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        from egecmp_ray.config import InputError

        raise InputError(f"tokenizer {where} lacks special tokens {missing}")


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> None:
    """``tokenizer.json`` plus a BERT-style ``vocab.txt`` (line number = token id)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / TOKENIZER_FILE))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (d / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab), encoding="utf-8")


def encode_padded(tok: Tokenizer, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids ``[len(texts), max_len]`` int32 with [CLS]/[SEP], truncated and [PAD]-padded."""
    pad_id = tok.token_to_id(PAD)
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(length=max_len, pad_id=pad_id, pad_token=PAD)
    try:
        out = np.array([e.ids for e in tok.encode_batch(list(texts))], dtype=np.int32)
    finally:  # leave the tokenizer as it was: its settings are saved with it
        tok.no_padding()
        tok.no_truncation()
    return out.reshape(len(texts), max_len)
