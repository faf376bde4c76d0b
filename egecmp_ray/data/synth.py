"""Synthetic Product1M look-alike rows, as pure functions of (config, split, row index).

Splits mirror Product1M: unlabelled ``train`` (single- and multi-product), labelled ``query``
(mostly multi-product, 2-12 products with pairs most common, some single-product for
identical-product retrieval) and a labelled single-product ``gallery`` that covers every
instance with several items each (5-20 in ``small``), so a query has many positives. Each row draws from its own RNG
seeded by ``(seed, split, index)``, so any shard can be generated anywhere, in any order, and
the bytes come out the same.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from egecmp_ray.config import DataConfig
from egecmp_ray.data.catalog import CATEGORIES, Catalog, Instance, build_catalog
from egecmp_ray.data.render import render_listing
from egecmp_ray.data.schema import SAMPLE_SCHEMA, empty_batch, to_table

SYNTH_SPLITS = ("train", "query", "gallery")
_SPLIT_ID = {name: i for i, name in enumerate(SYNTH_SPLITS)}

PLACES = ("韩国", "日本", "法国", "美国", "泰国", "德国", "进口", "香港")
MARKETING = ("包邮", "正品", "限时", "特价", "官方", "旗舰店", "新款", "热卖", "秒杀", "直播",
             "专柜", "授权", "现货", "买一送一", "抢购", "爆款", "清仓")
SET_WORDS = ("套装", "套盒", "礼盒", "组合", "礼包")
COUNT_WORDS = {2: "两件套", 3: "三件套", 4: "四件套", 5: "五件套", 6: "六件套"}
SPEC_SIZES = (15, 30, 50, 75, 100, 120, 150, 200, 250, 500)
GIFT_WORDS = ("送", "赠", "配", "加购")

# Kinds of malformed row injected when data.corrupt_fraction > 0 (tests of the quarantine).
CORRUPTIONS = ("empty_title", "broken_image", "title_too_long", "too_many_labels")


@dataclass(frozen=True)
class SplitSizes:
    train: int
    query: int
    gallery: int

    def of(self, split: str) -> int:
        return getattr(self, split)


def split_sizes(cfg: DataConfig) -> SplitSizes:
    """Rows per split; they always sum to ``cfg.rows`` and none is negative."""
    query = min(cfg.rows, int(round(cfg.rows * cfg.query_fraction)))
    gallery = min(cfg.rows - query, int(round(cfg.rows * cfg.gallery_fraction)))
    return SplitSizes(train=cfg.rows - query - gallery, query=query, gallery=gallery)


def item_id(split: str, index: int) -> str:
    """12-digit ids like Product1M's, with the split in the first digit."""
    return f"{_SPLIT_ID[split] + 1}{index:011d}"


def _row_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_ID[split], index])


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _brand_alias(rng: np.random.Generator, catalog: Catalog, inst: Instance) -> str:
    aliases = catalog.brands[inst.brand].aliases
    # The canonical spelling is the most common; the others share the rest.
    return aliases[0] if rng.random() < 0.4 else _pick(rng, aliases[1:])


def _join(rng: np.random.Generator, words: list[str]) -> str:
    """Concatenate like seller titles do: mostly no spaces, sometimes one."""
    out = ""
    for w in words:
        if out and rng.random() < 0.25:
            out += " "
        out += w
    return out.strip()


def _noise(rng: np.random.Generator) -> list[str]:
    return [_pick(rng, MARKETING) for _ in range(int(rng.integers(0, 4)))]


def single_title(rng: np.random.Generator, catalog: Catalog, inst: Instance) -> str:
    words: list[str] = []
    if rng.random() < 0.3:
        words.append(_pick(rng, PLACES))
    head, tail = _noise(rng), _noise(rng)
    words += head
    if rng.random() < 0.95:
        words.append(_brand_alias(rng, catalog, inst))
    if rng.random() < 0.85:
        words.append(_pick(rng, inst.series.spellings))
    synonyms = CATEGORIES[inst.category][1]
    if rng.random() < 0.95:
        words.append(_pick(rng, synonyms))
    if inst.variant and rng.random() < 0.8:
        words.append(inst.variant)
    if rng.random() < 0.6:
        words.append(f"{_pick(rng, [str(s) for s in SPEC_SIZES])}{CATEGORIES[inst.category][2]}")
    if rng.random() < 0.3:  # another product's words: a gift or a cross-sell
        other = catalog.instances[int(rng.integers(len(catalog.instances)))]
        words += [_pick(rng, GIFT_WORDS), other.series.name, _pick(rng, CATEGORIES[other.category][1])]
    return _join(rng, words + tail)


def multi_title(rng: np.random.Generator, catalog: Catalog, insts: list[Instance]) -> str:
    words: list[str] = []
    if rng.random() < 0.3:
        words.append(_pick(rng, PLACES))
    words += _noise(rng)
    brands_seen: set[int] = set()
    for inst in insts:
        if inst.brand not in brands_seen:
            brands_seen.add(inst.brand)
            words.append(_brand_alias(rng, catalog, inst))
            if rng.random() < 0.8:
                words.append(_pick(rng, inst.series.spellings))
    words.append(_pick(rng, SET_WORDS))
    for inst in insts:
        if rng.random() < 0.7:
            words.append(_pick(rng, CATEGORIES[inst.category][1]))
    if len(insts) in COUNT_WORDS and rng.random() < 0.5:
        words.append(COUNT_WORDS[len(insts)])
    return _join(rng, words + _noise(rng))


def _set_size(rng: np.random.Generator, cfg: DataConfig) -> int:
    """2..max_products, P(n) ~ products_decay^(n-2): pairs most common, as in Product1M."""
    sizes = np.arange(2, cfg.max_products + 1)
    weights = cfg.products_decay ** (sizes - 2)
    return int(rng.choice(sizes, p=weights / weights.sum()))


@functools.lru_cache(maxsize=8)
def gallery_counts(seed: int, num_instances: int, gallery_rows: int, low: int, high: int
                   ) -> np.ndarray:
    """Gallery items per instance: a weight uniform in [low, high] per instance, rescaled to
    ``gallery_rows`` by largest remainders, every instance at least one item when there are
    enough rows (the gallery covers every instance)."""
    if gallery_rows < num_instances:  # too few rows: one item each for the first ones
        return (np.arange(num_instances) < gallery_rows).astype(np.int64)
    weights = np.random.default_rng([seed, 7919]).uniform(low, high + 1, num_instances).astype(int)
    extra = gallery_rows - num_instances
    share = (weights - 1) / max((weights - 1).sum(), 1) * extra if extra else np.zeros(num_instances)
    counts = np.floor(share).astype(np.int64)
    left = extra - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:left]] += 1
    return counts + 1


@functools.lru_cache(maxsize=8)
def _gallery_ends(seed: int, num_instances: int, gallery_rows: int, low: int, high: int
                  ) -> np.ndarray:
    """Cumulative gallery counts: instance j owns rows [ends[j-1], ends[j])."""
    return np.cumsum(gallery_counts(seed, num_instances, gallery_rows, low, high))


def gallery_instance(cfg: DataConfig, index: int) -> int:
    """The instance of gallery row ``index``: rows are laid out instance by instance."""
    ends = _gallery_ends(cfg.seed, cfg.num_instances, split_sizes(cfg).gallery,
                         cfg.gallery_items[0], cfg.gallery_items[1])
    return int(np.searchsorted(ends, index, side="right")) % cfg.num_instances


def _set_of(rng: np.random.Generator, catalog: Catalog, cfg: DataConfig) -> list[Instance]:
    """2..max_products instances, mostly of one brand; repeats allowed (labels may repeat)."""
    n = _set_size(rng, cfg)
    first = catalog.instances[int(rng.integers(len(catalog.instances)))]
    if rng.random() < 0.8:
        pool = catalog.by_brand(first.brand)
        return [first] + [catalog.instances[pool[int(rng.integers(len(pool)))]] for _ in range(n - 1)]
    return [first] + [catalog.instances[int(rng.integers(len(catalog.instances)))] for _ in range(n - 1)]


def _corrupt(rng: np.random.Generator, row: dict[str, Any], cfg: DataConfig) -> None:
    kind = _pick(rng, CORRUPTIONS if row["image"] is not None else
                 tuple(c for c in CORRUPTIONS if c != "broken_image"))
    if kind == "empty_title":
        row["title"] = "" if rng.random() < 0.5 else None
    elif kind == "broken_image":
        row["image"] = row["image"][: len(row["image"]) // 3]
    elif kind == "title_too_long":
        row["title"] = (row["title"] or "x") * (cfg.max_title_chars // max(1, len(row["title"] or "x")) + 2)
    elif kind == "too_many_labels":
        row["labels"] = ["噪声标签"] * (cfg.max_labels + 1)


def generate_row(cfg: DataConfig, split: str, index: int,
                 catalog: Optional[Catalog] = None) -> tuple[dict[str, Any], bool]:
    """One sample row and whether it was deliberately corrupted."""
    catalog = catalog or build_catalog(cfg.seed, cfg.num_brands, cfg.num_instances)
    rng = _row_rng(cfg.seed, split, index)
    if split == "gallery":  # every instance, 5-20 items each (data.gallery_items)
        insts = [catalog.instances[gallery_instance(cfg, index)]]
    elif split == "query":
        single = rng.random() < cfg.query_single_fraction
        insts = [catalog.instances[int(rng.integers(len(catalog.instances)))]] if single \
            else _set_of(rng, catalog, cfg)
    else:
        insts = _set_of(rng, catalog, cfg) if rng.random() < cfg.train_multi_fraction \
            else [catalog.instances[int(rng.integers(len(catalog.instances)))]]

    title = single_title(rng, catalog, insts[0]) if len(insts) == 1 else multi_title(rng, catalog, insts)
    base = sum(i.price for i in insts) * (1.0 if len(insts) == 1 else rng.uniform(0.7, 0.95))
    image = None
    if cfg.images:
        products = [(i, catalog.brands[i.brand].color) for i in insts]
        image = render_listing(rng, products, cfg.image_size, cfg.jpeg_quality)
    row = {
        "item_id": item_id(split, index),
        "title": title,
        "image": image,
        "has_image": image is not None,
        "image_url": None,
        "labels": [] if split == "train" else [catalog.label(i) for i in insts],
        "price": round(float(base * rng.uniform(0.85, 1.15)), 2),
        "category": insts[0].category_name,
        "split": split,
        "source": "synthetic",
    }
    corrupted = cfg.corrupt_fraction > 0 and rng.random() < cfg.corrupt_fraction
    if corrupted:
        _corrupt(rng, row, cfg)
    return row, corrupted


def generate_rows(cfg: DataConfig, split: str, start: int, stop: int) -> tuple[pa.Table, int]:
    """Rows ``[start, stop)`` of ``split`` as a SAMPLE_SCHEMA table, and how many are corrupt."""
    catalog = build_catalog(cfg.seed, cfg.num_brands, cfg.num_instances)
    cols = empty_batch(SAMPLE_SCHEMA)
    corrupt = 0
    for index in range(start, stop):
        row, bad = generate_row(cfg, split, index, catalog)
        corrupt += bad
        for k, v in row.items():
            cols[k].append(v)
    return to_table(cols), corrupt
