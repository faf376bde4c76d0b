"""Per-batch work of preprocessing, as pure functions Ray Data, tests and benchmarks share.

``text_batch``: clean titles and extract entities (pass 1, feeds the vocabulary, the graph and
the tokenizer). ``encode_batch``: the training-ready columns of a shard (pass 2): token ids of
the title, of the ``[SEP]``-joined entity sequence and of each entity, entity node ids, and
region features with boxes and an image mask.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from egecmp_ray.config import EntityConfig
from egecmp_ray.entities.clean import clean_title
from egecmp_ray.entities.extract import load_extractor
from egecmp_ray.entities.regions import region_batch
from egecmp_ray.entities.tokenizer import SEP, encode_padded, load_tokenizer

ENTITY_TOKENS = 8  # tokens per single entity ([CLS] word-pieces [SEP])
PASSTHROUGH = ("item_id", "split", "labels", "price", "category")


@functools.lru_cache(maxsize=4)
def _extractor(spec: str, max_entities: int):
    return load_extractor(spec, max_entities)


def text_batch(batch: dict[str, Any], cfg: EntityConfig) -> dict[str, Any]:
    """Clean titles + entities; drops image bytes early (pass 1 needs text only)."""
    extract = _extractor(cfg.extractor, cfg.max_entities)
    titles = [clean_title(t) for t in batch["title"]]
    return {"item_id": batch["item_id"], "title": np.array(titles, dtype=object),
            "entities": _object_array([extract(t) for t in titles])}


def _object_array(lists: list[list[str]]) -> np.ndarray:
    """A 1-d object array of Python lists (becomes an Arrow list<string> column)."""
    out = np.empty(len(lists), dtype=object)
    out[:] = lists
    return out


@functools.lru_cache(maxsize=4)
def _vocab(path: str) -> dict[str, int]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {line.split("\t", 1)[0]: i for i, line in enumerate(lines)}


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    return load_tokenizer(path)


def encode_batch(batch: dict[str, Any], cfg: EntityConfig, vocab_dir: str) -> dict[str, Any]:
    """Training-ready columns for a batch of validated sample rows."""
    extract = _extractor(cfg.extractor, cfg.max_entities)
    tok = _tokenizer(str(Path(vocab_dir) / "tokenizer.json"))
    vocab = _vocab(str(Path(vocab_dir) / "entities.tsv"))
    n = len(batch["item_id"])
    titles = [clean_title(t) for t in batch["title"]]
    entities = [extract(t) for t in titles]

    ent_ids = np.full((n, cfg.max_entities), -1, dtype=np.int32)
    flat_entities: list[str] = []
    for i, ents in enumerate(entities):
        ent_ids[i, :len(ents)] = [vocab.get(e, -1) for e in ents]
        flat_entities += ents + [""] * (cfg.max_entities - len(ents))
    ent_tokens = encode_padded(tok, flat_entities, ENTITY_TOKENS).reshape(n, cfg.max_entities, ENTITY_TOKENS)
    ent_mask = np.arange(cfg.max_entities)[None, :] < np.array([len(e) for e in entities])[:, None]
    ent_tokens[~ent_mask] = tok.token_to_id("[PAD]")  # empty slots hold no [CLS]/[SEP] either

    feats, boxes, image_mask = region_batch(list(batch["image"]))
    out = {k: batch[k] for k in PASSTHROUGH}
    out["labels"] = _object_array([[str(x) for x in labs] for labs in batch["labels"]])
    out.update({
        "title": np.array(titles, dtype=object),
        "entities": _object_array(entities),
        "title_ids": encode_padded(tok, titles, cfg.max_tokens),
        "entity_seq_ids": encode_padded(tok, [f" {SEP} ".join(e) for e in entities], cfg.max_tokens),
        "entity_ids": ent_ids,
        "entity_token_ids": ent_tokens,
        "entity_mask": ent_mask,
        "region_feats": feats,
        "region_boxes": boxes,
        "image_mask": image_mask,
    })
    return out
