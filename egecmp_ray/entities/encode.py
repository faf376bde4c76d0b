"""Per-batch work of preprocessing, as pure functions Ray Data, tests and benchmarks share.

Preprocess runs them in two passes: ``work_batch`` (pass 1, after validation, which decoded
and featurised each image once): cleaned titles, entities and image regions, feeding the
vocabulary, the graph and the tokenizer; ``encode_work_batch`` (pass 2, over pass 1's rows):
the vocabulary-dependent columns, i.e. token ids of the title, of the ``[SEP]``-joined entity
sequence and of each entity, and entity node ids. ``item_features`` / ``encode_batch`` do both
in one call (the inference encoder; benchmarks), ``text_batch`` the text part alone. All return
typed columns, so an all-empty list column (train rows have no labels) is still
``list<string>`` in every shard.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from egecmp_ray.config import EntityConfig
from egecmp_ray.data.clean import clean_title
from egecmp_ray.data import storage
from egecmp_ray.entities.extract import load_extractor
from egecmp_ray.entities.regions import (GRID_FEATURE_DIM, grid_region_batch, precomputed_dim,
                                         region_batch)
from egecmp_ray.entities.tokenizer import PAD, SEP, encode_padded, load_tokenizer

STRING_LIST = pa.list_(pa.string())
TENSOR_COLUMNS = ("title_ids", "entity_seq_ids", "entity_ids", "entity_token_ids", "entity_mask",
                  "region_feats", "region_boxes")
# Parquet leaf columns that get dictionary encoding and min/max statistics: the scalar and
# string ones. On the tensor columns (2,304 float16 values a row of region features) both
# cost and nothing uses them: measured on 6,000 ``_work`` rows, the write took 0.35 s with
# them and 0.17 s without, the read 0.29 s (dictionary pages of FIXED_LEN_BYTE_ARRAY) and
# 0.08 s. The values read back are the same.
DICTIONARY_COLUMNS = ("item_id", "split", "labels.list.element", "price", "category", "title",
                      "entities.list.element", "image_mask")


def parquet_options() -> dict[str, Any]:
    """``write_parquet`` keyword arguments for preprocess's row files (``_work`` and shards)."""
    return {"use_dictionary": list(DICTIONARY_COLUMNS), "write_statistics": list(DICTIONARY_COLUMNS)}


@functools.lru_cache(maxsize=4)
def _extractor(spec: str, max_entities: int):
    return load_extractor(spec, max_entities)


def text_batch(batch: dict[str, Any], cfg: EntityConfig) -> pa.Table:
    """Clean titles + entities of raw rows (the text half of ``work_batch``)."""
    extract = _extractor(cfg.extractor, cfg.max_entities)
    titles = [clean_title(t) for t in batch["title"]]
    return pa.table({"item_id": pa.array(list(batch["item_id"]), pa.string()),
                     "title": pa.array(titles, pa.string()),
                     "entities": pa.array([extract(t) for t in titles], STRING_LIST)})


def write_vocab(path: Path, vocab: list[tuple[str, int]]) -> None:
    """``entity<TAB>count`` lines; the line number is the node id."""
    path.write_text("".join(f"{e}\t{c}\n" for e, c in vocab), encoding="utf-8")


def read_vocab(path: Path) -> list[tuple[str, int]]:
    rows = [line.split("\t") for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return [(e, int(c)) for e, c in rows]


def _file_key(path: Path) -> tuple[str, int, int]:
    """Path plus mtime and size: a cache keyed on it never serves a rewritten file."""
    st = os.stat(path)
    return str(path), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=4)
def _vocab(key: tuple[str, int, int]) -> dict[str, int]:
    return {e: i for i, (e, _) in enumerate(read_vocab(Path(key[0])))}


@functools.lru_cache(maxsize=4)
def _tokenizer(key: tuple[str, int, int]):
    return load_tokenizer(key[0])


def region_dim(cfg: EntityConfig) -> int:
    return precomputed_dim(cfg.region_features) if cfg.region_features else GRID_FEATURE_DIM


def _tensor(arr: np.ndarray) -> pa.Array:
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(np.ascontiguousarray(arr))


def text_features(titles: list[str], entities: list[list[str]], cfg: EntityConfig,
                  vocab_dir: str) -> dict[str, np.ndarray]:
    """The vocabulary-dependent columns of cleaned titles and their entities: token ids of
    the title, of the ``[SEP]``-joined entity sequence and of each entity, entity node ids."""
    local = storage.local_input(vocab_dir)  # an object-store vocabulary: fetched once a process
    tok = _tokenizer(_file_key(local / "tokenizer.json"))
    vocab = _vocab(_file_key(local / "entities.tsv"))
    n = len(titles)
    ent_ids = np.full((n, cfg.max_entities), -1, dtype=np.int32)
    for i, ents in enumerate(entities):
        ent_ids[i, :len(ents)] = [vocab.get(e, -1) for e in ents]
    # Each distinct entity of the batch is tokenized once (a batch of 2,000 rows holds ~8,000
    # entities but ~700 distinct ones; tokenizing every padded slot was 80% of this function)
    # and scattered into its slots; empty slots hold [PAD] only, no [CLS]/[SEP].
    lengths = np.array([len(e) for e in entities], dtype=np.int64)
    ent_mask = np.arange(cfg.max_entities)[None, :] < lengths[:, None]
    distinct = {e: k for k, e in enumerate(dict.fromkeys(e for ents in entities for e in ents))}
    ent_tokens = np.full((n, cfg.max_entities, cfg.entity_tokens), tok.token_to_id(PAD),
                         dtype=np.int32)
    if distinct:
        codes = encode_padded(tok, list(distinct), cfg.entity_tokens)
        ent_tokens[ent_mask] = codes[[distinct[e] for ents in entities for e in ents]]
    return {
        "title_ids": encode_padded(tok, titles, cfg.max_tokens),
        "entity_seq_ids": encode_padded(tok, [f" {SEP} ".join(e) for e in entities],
                                        cfg.max_tokens),
        "entity_ids": ent_ids,
        "entity_token_ids": ent_tokens,
        "entity_mask": ent_mask,
    }


def item_features(titles: list[str], images: list[Any], item_ids: list[str], cfg: EntityConfig,
                  vocab_dir: str) -> dict[str, np.ndarray]:
    """The model's input columns for raw titles and image bytes (None: no image), as the
    inference encoder computes them; preprocess computes the same in two passes
    (``work_batch`` then ``encode_work_batch``: tests pin that the two agree)."""
    extract = _extractor(cfg.extractor, cfg.max_entities)
    titles = [clean_title(t) for t in titles]
    entities = [extract(t) for t in titles]
    feats, boxes, image_mask = region_batch(list(images), [str(i) for i in item_ids],
                                            cfg.region_features, region_dim(cfg))
    return {"title": titles, "entities": entities,
            **text_features(titles, entities, cfg, vocab_dir),
            "region_feats": feats, "region_boxes": boxes, "image_mask": image_mask}


def work_batch(batch: dict[str, Any], cfg: EntityConfig) -> pa.Table:
    """Pass 1 of preprocess, after validation: the sample's columns with cleaned titles,
    entities and image regions (from ``image_features``, computed on validation's decode, or
    from ``entities.region_features`` files); no image bytes travel further."""
    extract = _extractor(cfg.extractor, cfg.max_entities)
    titles = [clean_title(t) for t in batch["title"]]
    ids = [str(i) for i in batch["item_id"]]
    if cfg.region_features:
        feats, boxes, mask = region_batch([None] * len(ids), ids, cfg.region_features,
                                          region_dim(cfg))
    else:
        feats, boxes, mask = grid_region_batch(list(batch["image_features"]))
    return pa.table({
        **_sample_columns(batch, ids),
        "title": pa.array(titles, pa.string()),
        "entities": pa.array([extract(t) for t in titles], STRING_LIST),
        "region_feats": _tensor(feats), "region_boxes": _tensor(boxes),
        "image_mask": pa.array(mask, pa.bool_()),
    })


def encode_work_batch(batch: dict[str, Any], cfg: EntityConfig, vocab_dir: str) -> pa.Table:
    """Pass 2 of preprocess: pass 1's rows -> the shard's columns (adds the vocabulary-
    dependent ones; no input is read again, no image decoded again)."""
    ids = [str(i) for i in batch["item_id"]]
    entities = [[str(e) for e in ents] for ents in batch["entities"]]
    f = text_features([str(t) for t in batch["title"]], entities, cfg, vocab_dir)
    return pa.table({
        **_sample_columns(batch, ids),
        "title": pa.array([str(t) for t in batch["title"]], pa.string()),
        "entities": pa.array(entities, STRING_LIST),
        **{name: _tensor(f[name]) for name in TENSOR_COLUMNS if name in f},
        "region_feats": _tensor(np.asarray(batch["region_feats"])),
        "region_boxes": _tensor(np.asarray(batch["region_boxes"])),
        "image_mask": pa.array(np.asarray(batch["image_mask"], dtype=bool), pa.bool_()),
    })


def _sample_columns(batch: dict[str, Any], ids: list[str]) -> dict[str, pa.Array]:
    return {
        "item_id": pa.array(ids, pa.string()),
        "split": pa.array(list(batch["split"]), pa.string()),
        "labels": pa.array([[str(x) for x in labs] for labs in batch["labels"]], STRING_LIST),
        "price": pa.array(list(batch["price"]), pa.float64()),
        "category": pa.array(list(batch["category"]), pa.string()),
    }


def encode_batch(batch: dict[str, Any], cfg: EntityConfig, vocab_dir: str) -> pa.Table:
    """Training-ready columns for a batch of validated sample rows in one call (what the two
    preprocess passes produce; benchmarks time the per-row work with it)."""
    f = item_features(list(batch["title"]), list(batch["image"]), list(batch["item_id"]), cfg,
                      vocab_dir)
    return pa.table({
        **_sample_columns(batch, [str(i) for i in batch["item_id"]]),
        "title": pa.array(f["title"], pa.string()),
        "entities": pa.array(f["entities"], STRING_LIST),
        **{name: _tensor(f[name]) for name in TENSOR_COLUMNS},
        "image_mask": pa.array(f["image_mask"], pa.bool_()),
    })
