"""The synthetic look-alike: determinism, split statistics, and the Ray Data writer."""

import dataclasses
import io
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from PIL import Image

from egecmp_ray.config import load_config
from egecmp_ray.data.catalog import build_catalog
from egecmp_ray.data.schema import SAMPLE_SCHEMA
from egecmp_ray.data.synth import generate_rows, split_sizes
from egecmp_ray.data.synth_pipeline import plan_shards, run_synth


@pytest.fixture(scope="module")
def data_cfg():
    return load_config(preset="tiny").data


def test_same_seed_same_bytes_other_seed_differs(data_cfg):
    a, _ = generate_rows(data_cfg, "query", 0, 20)
    b, _ = generate_rows(data_cfg, "query", 0, 20)
    assert a.schema == SAMPLE_SCHEMA
    assert a.equals(b)
    # A row does not depend on which shard or batch produced it.
    c, _ = generate_rows(data_cfg, "query", 10, 20)
    assert c.equals(a.slice(10))
    other, _ = generate_rows(dataclasses.replace(data_cfg, seed=1), "query", 0, 20)
    assert other["title"].to_pylist() != a["title"].to_pylist()


def test_catalog_has_aliases_and_spellings(data_cfg):
    cat = build_catalog(data_cfg.seed, data_cfg.num_brands, data_cfg.num_instances)
    assert len(cat.brands) == data_cfg.num_brands and len(cat.instances) == data_cfg.num_instances
    assert all(len(set(b.aliases)) >= 3 for b in cat.brands)
    assert all(len(set(i.series.spellings)) >= 3 for i in cat.instances)
    assert len({cat.label(i) for i in cat.instances}) == len(cat.instances)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 7, 99, 1000])
@pytest.mark.parametrize("fractions", [(0.04, 0.16), (0.5, 0.5), (0.3, 0.7), (0.0, 1.0), (1.0, 0.0)])
def test_split_sizes_sum_to_rows(rows, fractions):
    cfg = dataclasses.replace(load_config(preset="tiny").data, rows=rows,
                              query_fraction=fractions[0], gallery_fraction=fractions[1])
    sizes = split_sizes(cfg)
    assert min(sizes.train, sizes.query, sizes.gallery) >= 0
    assert sizes.train + sizes.query + sizes.gallery == rows
    assert sum(t.stop - t.start for t in plan_shards(cfg)) == rows


def test_split_statistics():
    cfg = dataclasses.replace(load_config(preset="tiny").data, rows=3000, images=False)
    sizes = split_sizes(cfg)
    assert sizes.train + sizes.query + sizes.gallery == 3000
    train, _ = generate_rows(cfg, "train", 0, sizes.train)
    query, _ = generate_rows(cfg, "query", 0, sizes.query)
    gallery, _ = generate_rows(cfg, "gallery", 0, sizes.gallery)
    cat = build_catalog(cfg.seed, cfg.num_brands, cfg.num_instances)

    assert all(not labels for labels in train["labels"].to_pylist())  # unlabelled
    g_labels = [labels for labels in gallery["labels"].to_pylist()]
    assert all(len(lab) == 1 for lab in g_labels)  # single-product gallery
    assert {lab[0] for lab in g_labels} == {cat.label(i) for i in cat.instances}  # covers all
    q_labels = query["labels"].to_pylist()
    assert all(1 <= len(lab) <= cfg.max_products for lab in q_labels)
    single = sum(len(lab) == 1 for lab in q_labels) / len(q_labels)
    assert abs(single - cfg.query_single_fraction) < 0.12
    assert any(len(set(lab)) < len(lab) for lab in q_labels)  # repeated labels occur
    assert all(lab in {g[0] for g in g_labels} for labs in q_labels for lab in labs)
    # Multi-product train items: about train_multi_fraction; titles name a set.
    titles = train["title"].to_pylist()
    assert sum(any(w in t for w in ("套装", "套盒", "礼盒", "组合", "礼包")) for t in titles) \
        == pytest.approx(cfg.train_multi_fraction * len(titles), rel=0.2)
    # Brands appear under several aliases, and marketing noise is common.
    spelled = Counter()
    for brand in cat.brands[:5]:
        for alias in brand.aliases:
            spelled[brand.canonical] += any(alias in t for t in titles)
    assert max(spelled.values()) >= 3
    assert sum("包邮" in t or "正品" in t for t in titles) > 0.1 * len(titles)
    assert all(p > 0 for p in train["price"].to_pylist())


def test_images_decode_and_show_products(data_cfg):
    table, _ = generate_rows(data_cfg, "gallery", 0, 5)
    for data in table["image"].to_pylist():
        im = Image.open(io.BytesIO(data))
        assert im.format == "JPEG" and im.size == (data_cfg.image_size, data_cfg.image_size)
        assert len(set(im.convert("RGB").getdata())) > 20  # not a blank canvas


def test_corruption_is_counted(data_cfg):
    cfg = dataclasses.replace(data_cfg, corrupt_fraction=0.2)
    _, corrupt = generate_rows(cfg, "train", 0, 200)
    assert 20 < corrupt < 70


def test_pipeline_writes_resumes_and_is_byte_identical(ray_session, tmp_path, data_cfg):
    cfg = dataclasses.replace(data_cfg, rows=300, shard_rows=100)
    out = tmp_path / "synth"
    m1 = run_synth(cfg, str(out))
    assert m1["rows"] == 300 and m1["shards_skipped_on_resume"] == 0
    files = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    assert len(files) == len(plan_shards(cfg))
    first = {f: (out / f).read_bytes() for f in files}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["gallery"]["rows"] == split_sizes(cfg).gallery

    (out / files[0]).unlink()  # a crash lost one shard: the re-run regenerates only it
    m2 = run_synth(cfg, str(out))
    assert m2["shards_skipped_on_resume"] == len(files) - 1
    assert {f: (out / f).read_bytes() for f in files} == first

    m3 = run_synth(cfg, str(out), overwrite=True)
    assert m3["shards_skipped_on_resume"] == 0
    assert {f: (out / f).read_bytes() for f in files} == first  # same seed, same bytes

    smaller = dataclasses.replace(cfg, rows=150)
    run_synth(smaller, str(out))
    rows = sum(pq.read_metadata(p).num_rows for p in out.rglob("*.parquet"))
    assert rows == 150  # stale shards of the bigger run are gone, no duplicates


def test_small_preset_has_product1m_shape():
    """Tens of gallery items per instance (5-20), queries of 1-12 products, pairs the commonest."""
    from collections import Counter

    from egecmp_ray.data.synth import gallery_counts, gallery_instance

    cfg = dataclasses.replace(load_config(preset="small").data, images=False)
    sizes = split_sizes(cfg)
    counts = gallery_counts(cfg.seed, cfg.num_instances, sizes.gallery, *cfg.gallery_items)
    assert counts.sum() == sizes.gallery and len(counts) == cfg.num_instances
    assert counts.min() >= 5 and counts.max() <= 21 and 11 <= counts.mean() <= 14
    seen = Counter(gallery_instance(cfg, i) for i in range(sizes.gallery))
    assert [seen[j] for j in range(cfg.num_instances)] == counts.tolist()
    query, _ = generate_rows(cfg, "query", 0, sizes.query)
    sizes_q = Counter(len(lab) for lab in query["labels"].to_pylist())
    assert max(sizes_q) <= 12 and sum(v for k, v in sizes_q.items() if k >= 5) > 0
    assert sizes_q[2] == max(v for k, v in sizes_q.items() if k > 1)
