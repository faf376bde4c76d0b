"""Indexing into Milvus Lite, the evaluation harness and the TF-IDF baseline, on the session's
local Ray cluster and the tiny preprocessed dataset (with injected bad rows)."""

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from egecmp_ray.cli import cli
from egecmp_ray.config import InputError, load_config
from egecmp_ray.retrieval.evaluate import positives_warning, run_evaluate
from egecmp_ray.retrieval.indexing import run_index
from egecmp_ray.retrieval.metrics import queries_without_positives
from egecmp_ray.retrieval.lexical import lexical_text
from egecmp_ray.retrieval.milvus_store import VectorStore, index_params
from egecmp_ray.retrieval.tfidf import TfidfIndex


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def test_tfidf_ranks_same_product_titles_first():
    index = TfidfIndex(["SK-II 神仙水 230ml", "AHC 黄金面霜", "兰蔻 小黑瓶 精华"])
    _, idx = index.search(["skii 神仙水 正品 包邮", "ahc面霜"], top_k=2)
    assert idx[:, 0].tolist() == [0, 1]


def test_vector_store_upserts_by_id_and_searches(tmp_path):
    cfg = load_config(preset="tiny", overrides=[f"index.milvus_uri={tmp_path / 'm.db'}"]).index
    store = VectorStore(cfg, dim=8, collection="t")
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(20, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    batch = {"id": [f"i{i}" for i in range(20)], "vector": vecs, "label": ["a"] * 20,
             "title": ["t"] * 20, "price": [1.0] * 20, "category": ["c"] * 20}
    store.upsert(batch)
    store.upsert(batch)  # the same items again: replaced, not duplicated
    assert store.count() == 20
    store.upsert({**batch, "id": [f"j{i}" for i in range(20)]})
    assert store.count() == 40
    hits = store.search(vecs[:3], top_k=1, filter='id like "i%"')
    assert [h[0]["id"] for h in hits] == ["i0", "i1", "i2"]
    assert set(hits[0][0]) == {"id", "score"}  # no vectors sent back unless asked for
    store.close()
    with pytest.raises(InputError, match="16-d"):
        VectorStore(cfg, dim=16, collection="t")


def test_hnsw_searches_ask_for_an_ef_of_at_least_their_limit():
    """knowhere's HNSW checks ef >= k (/recommend asks 4 x top_k, hybrid 200 candidates)."""
    cfg = load_config(preset="tiny", overrides=["index.index_type=HNSW", "index.hnsw_ef=128"]).index
    assert index_params(cfg, 10)[1] == {"ef": 128} and index_params(cfg, 400)[1] == {"ef": 400}


def test_get_and_delete_by_id_touch_exactly_those_ids_whatever_they_hold(tmp_path):
    """Ids are any characters but path separators: quotes and backslashes must neither break
    the id expression nor widen it (``nope','real`` once deleted ``real``)."""
    cfg = load_config(preset="tiny", overrides=[f"index.milvus_uri={tmp_path / 'm.db'}"]).index
    store = VectorStore(cfg, dim=4, collection="ids")
    ids = ["real", "it's", 'say "hi"', "back\\", "tab\tnew\nline", "nope','real", 'x", "real']
    n = len(ids)
    store.upsert({"id": ids, "vector": np.eye(n, 4, dtype=np.float32) + 0.1,
                  "label": ["a"] * n, "title": ["t"] * n, "price": [1.0] * n,
                  "category": ["c"] * n})
    for i in ids:
        assert [r["id"] for r in store.get([i])] == [i]
    assert store.get(["nope"]) == [] and store.get([]) == []
    store.delete(["nope','real", 'x", "real', "absent"])
    store.delete(["it's", "back\\"])
    assert sorted(r["id"] for r in store.get(ids)) == sorted(
        ["real", 'say "hi"', "tab\tnew\nline"])
    assert store.count() == 3
    store.close()


# A process that owns a Lite file: fills it, closes the store, and exits at once, as a Ray
# actor does when it is killed right after close (index, evaluate) or a Serve replica stops.
_WRITE_AND_EXIT = """
import os, sys
import numpy as np
from egecmp_ray.config import load_config
from egecmp_ray.retrieval.milvus_store import VectorStore
cfg = load_config(preset="tiny", overrides=["index.milvus_uri=" + sys.argv[1]]).index
store = VectorStore(cfg, dim=512, collection="t")
vecs = np.random.default_rng(0).normal(size=(8000, 512)).astype(np.float32)
vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
n = len(vecs)
store.upsert({"id": [f"i{i}" for i in range(n)], "vector": vecs, "label": ["a"] * n,
              "title": ["t"] * n, "price": [1.0] * n, "category": ["c"] * n})
assert store.count() == n  # flushed: Lite now compacts and writes the index in the background
store.close()
os._exit(0)
"""


def test_a_closed_lite_store_is_whole_even_if_its_process_dies_right_after(tmp_path):
    """close() waits for Lite's background index writes: the next owner opens the file and
    finds every row (a killed writer used to leave a half-written index file behind)."""
    import subprocess
    import sys

    db = tmp_path / "m.db"
    done = subprocess.run([sys.executable, "-c", _WRITE_AND_EXIT, str(db)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = load_config(preset="tiny", overrides=[f"index.milvus_uri={db}"]).index
    store = VectorStore(cfg, dim=512, collection="t")
    try:
        assert store.count() == 8000
        vecs = np.random.default_rng(0).normal(size=(8000, 512)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        hits = store.search(vecs[[0, 4321, 7999]], top_k=1)
        assert [h[0]["id"] for h in hits] == ["i0", "i4321", "i7999"]
    finally:
        store.close()


def test_an_ann_index_is_rebuilt_in_place_and_searched_only_once_built(tmp_path):
    """rebuild_vector_index swaps FLAT for a real ANN index over the same rows and returns
    once every row is indexed; with a weak search parameter its recall drops far below the
    exact search's 1.0 (what shows the index, not a brute-force pass over unindexed rows, answered)."""
    import dataclasses

    cfg = load_config(preset="tiny", overrides=[f"index.milvus_uri={tmp_path / 'm.db'}"]).index
    store = VectorStore(cfg, dim=32, collection="ann")
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3000, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    n = len(vecs)
    store.upsert({"id": [str(i) for i in range(n)], "vector": vecs, "label": [""] * n,
                  "title": [""] * n, "price": [0.0] * n, "category": [""] * n})
    queries = vecs[:40]
    exact = np.argsort(-(queries @ vecs.T), axis=1)[:, :20]

    def recall() -> float:
        hits = store.search(queries, top_k=20)
        return float(np.mean([len({int(h["id"]) for h in row} & set(e.tolist())) / 20
                              for row, e in zip(hits, exact)]))

    assert store.index_state()["index_type"] == "FLAT" and recall() == 1.0
    ivf = dataclasses.replace(cfg, index_type="IVF_FLAT", nlist=64, nprobe=1)
    assert store.rebuild_vector_index(ivf) >= 0
    state = store.index_state()
    assert state["index_type"] == "IVF_FLAT" and state["indexed_rows"] == state["rows"] == n
    weak = recall()
    store.cfg = dataclasses.replace(ivf, nprobe=64)  # every list probed
    assert weak < 0.5 < 0.9 < recall()
    store.close()


def test_lexical_and_hybrid_search(tmp_path):
    """BM25 over title n-grams finds a respelled title; hybrid fuses it with the dense side."""
    cfg = load_config(preset="tiny", overrides=[f"index.milvus_uri={tmp_path / 'h.db'}"]).index
    store = VectorStore(cfg, dim=4, collection="h")
    titles = ["SK-II 神仙水 230ml", "AHC 黄金面霜", "兰蔻 小黑瓶 精华", "雅诗兰黛 小棕瓶 精华"]
    vecs = np.eye(4, dtype=np.float32)
    store.upsert({"id": ["a", "b", "c", "d"], "vector": vecs, "label": list("abcd"),
                  "title": titles, "price": [1.0] * 4, "category": ["x", "x", "y", "y"]})
    assert lexical_text("SK-II 神仙水") == "s k sk i i ii 神 仙 水 神仙 仙水"
    hits = store.lexical_search(["skii神仙水 正品", "！！！"], top_k=2)
    assert set(hits[0][0]) == {"id", "score"}
    assert hits[0][0]["id"] == "a" and hits[1] == []  # punctuation only: no lexical hit
    # dense points at d, the text at c: both sides' first hits lead the fused list
    store.cfg.hybrid_ranker = "rrf"  # Milvus' own hybrid_search
    fused = store.hybrid_search(vecs[[3]], ["兰蔻小黑瓶"], top_k=4)
    assert {h["id"] for h in fused[0][:2]} == {"c", "d"}
    only_dense = store.hybrid_search(vecs[[1]], [None], top_k=1)
    assert only_dense[0][0]["id"] == "b"
    assert {h["id"] for h in store.hybrid_search(vecs[[3]], ["精华"], 4, 'category == "x"')[0]} \
        <= {"a", "b"}
    store.cfg.hybrid_ranker = "zscore"  # fused in the client (the default is minmax)
    fused = store.hybrid_search(vecs[[3, 1]], ["兰蔻小黑瓶", None], top_k=4)
    assert {h["id"] for h in fused[0][:2]} == {"c", "d"} and set(fused[0][0]) == {"id", "score"}
    assert fused[1][0]["id"] == "b"  # no title: the dense side alone
    assert {h["id"] for h in store.hybrid_search(vecs[[3]], ["精华"], 4, 'category == "x"')[0]} \
        <= {"a", "b"}
    store.close()


OLD_COLLECTION = """
from pymilvus import DataType, MilvusClient
client = MilvusClient({uri!r})
schema = client.create_schema(auto_id=False)
schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
schema.add_field("vector", DataType.FLOAT_VECTOR, dim=4)
for name in ("label", "title", "category"):
    schema.add_field(name, DataType.VARCHAR, max_length=256)
schema.add_field("price", DataType.DOUBLE)
params = client.prepare_index_params()
params.add_index("vector", index_type="FLAT", metric_type="IP")
client.create_collection("old", schema=schema, index_params=params)
"""


def test_hybrid_on_a_collection_built_before_it_says_reindex(tmp_path):
    """A collection from before hybrid retrieval (no BM25 field) still serves dense search and
    takes upserts; hybrid on it says what to do. (Built in its own process: a Lite file is
    released only when its process exits.)"""
    import subprocess
    import sys

    uri = str(tmp_path / "old.db")
    subprocess.run([sys.executable, "-c", OLD_COLLECTION.format(uri=uri)], check=True, timeout=120)
    cfg = load_config(preset="tiny", overrides=[f"index.milvus_uri={uri}"]).index
    store = VectorStore(cfg, dim=4, collection="old")
    vecs = np.eye(4, dtype=np.float32)[:1]
    store.upsert({"id": ["a"], "vector": vecs, "label": ["l"], "title": ["t"], "price": [1.0],
                  "category": ["c"]})
    assert store.count() == 1 and store.search(vecs, 1)[0][0]["id"] == "a"
    with pytest.raises(InputError, match="re-index it into a new --collection"):
        store.hybrid_search(vecs, ["t"], 1)
    store.close()


def test_a_store_made_without_the_bm25_field_searches_dense_only(tmp_path):
    """``lexical=False`` (for Milvus servers before 2.5): no sparse field, dense search works,
    hybrid search says what is missing."""
    cfg = load_config(preset="tiny", overrides=[f"index.milvus_uri={tmp_path / 'dense.db'}"]).index
    store = VectorStore(cfg, dim=4, collection="dense", lexical=False)
    fields = {f["name"] for f in store.client.describe_collection("dense")["fields"]}
    assert "sparse" not in fields and "lexical" not in fields and not store.lexical
    vecs = np.eye(4, dtype=np.float32)[:2]
    store.upsert({"id": ["a", "b"], "vector": vecs, "label": ["l", "m"], "title": ["t", "u"],
                  "price": [1.0, 2.0], "category": ["c", "c"]})
    assert store.count() == 2 and store.search(vecs[1:], 1)[0][0]["id"] == "b"
    with pytest.raises(InputError, match="no lexical"):
        store.hybrid_search(vecs, ["t"], 1)
    store.close()


def test_tfidf_evaluation_writes_the_protocol_files(prepared, tmp_path):
    tmp, cfg, synth, _ = prepared
    s = run_evaluate(str(tmp / "synth"), str(tmp / "synth"), str(tmp_path), cfg, method="tfidf")
    m = json.loads((tmp_path / "metric_results.json").read_text())
    assert set(m) >= {"top10", "top50", "top100", "identical", "counts"}
    assert 0.0 < m["top10"]["mAP"] <= 1.0
    # tiny has ~4 single-product queries: their figures are fractions, not necessarily > 0
    assert m["counts"]["identical_queries"] > 0
    assert all(0.0 <= v <= 1.0 for v in m["identical"].values())
    lines = (tmp_path / "retrieval_id_list.txt").read_text().splitlines()
    assert len(lines) == m["counts"]["queries"] + m["counts"]["unlabelled_queries"]
    for line in lines:
        qid, *ranked = line.split(",")
        assert qid not in ranked and 0 < len(ranked) <= 100
    bad = m["counts"]["quarantined"]
    assert bad["queries"] + bad["gallery"] > 0  # the injected bad rows, counted
    assert s["method"] == "tfidf"


@pytest.mark.parametrize("method", ["model", pytest.param("hybrid", marks=pytest.mark.slow)])
def test_model_evaluation_through_milvus(prepared, model_dir, tmp_path, method):
    tmp, cfg, _, _ = prepared
    cfg.index.milvus_uri = str(tmp_path / "milvus.db")
    s = run_evaluate(str(tmp / "synth"), str(tmp / "synth"), str(tmp_path / "eval"), cfg,
                     method=method, model_dir=str(model_dir))
    m = s["metrics"]
    if method == "hybrid":  # each side alone is scored from the same collection
        assert set(m["components"]) == {"dense", "lexical"}
        assert m["components"]["lexical"]["top10"]["mAP"] > 0.0
    assert s["indexed"] == m["counts"]["gallery"] > 0
    assert all(0.0 <= m[r][k] <= 1.0 for r in ("top10", "top100") for k in ("mAP", "Prec", "mAR"))
    lines = (tmp_path / "eval" / "retrieval_id_list.txt").read_text().splitlines()
    expected = min(100, s["indexed"])  # queries are not in this gallery: nothing to remove
    assert lines and all(len(line.split(",")) == 1 + expected for line in lines)


def _rows_in(directory) -> int:
    return pq.read_table(directory).num_rows if any(directory.glob("*.parquet")) else 0


@pytest.mark.slow
def test_index_is_idempotent_and_incremental(prepared, model_dir, tmp_path):
    tmp, cfg, _, _ = prepared
    cfg.index.milvus_uri = str(tmp_path / "items.db")
    quarantine = tmp_path / "items_quarantine"  # beside the Lite file, holding this run's rows
    first = run_index(str(model_dir), str(tmp / "synth" / "gallery"), cfg, collection="items")
    assert first["quarantine"] == str(quarantine) and _rows_in(quarantine) == first["quarantined"]
    again = run_index(str(model_dir), str(tmp / "synth" / "gallery"), cfg, collection="items")
    assert first["total"] == again["total"] == first["rows"]
    assert _rows_in(quarantine) == again["quarantined"] == first["quarantined"]
    more = run_index(str(model_dir), str(tmp / "synth" / "query"), cfg, collection="items")
    assert more["total"] == first["total"] + more["rows"]
    assert _rows_in(quarantine) == more["quarantined"]
    with pytest.raises(InputError, match="model dir"):
        run_index(str(tmp_path), str(tmp / "synth"), cfg)

    result = CliRunner().invoke(cli, ["index", "--model", str(model_dir), "--data",
                                      str(tmp / "synth" / "query"), "--milvus-uri",
                                      cfg.index.milvus_uri, "--collection", "items",
                                      "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    summary = [line for line in result.output.splitlines() if line.startswith("index:")]
    assert summary and summary[-1].endswith(f"; quarantine -> {quarantine}"), result.output


def test_queries_without_positives_are_counted():
    assert queries_without_positives({"q1": ["A"], "q2": ["B", "C"], "q3": ["C", "A"]},
                                     {"g1": "A", "g2": "A"}) == 1  # q2: no B or C in the gallery
    assert positives_warning(0, 3) is None
    assert positives_warning(1, 3).startswith("1 of 3 labelled queries have no positive")
    assert positives_warning(3, 3).startswith("none of the 3 labelled queries has a positive")


def test_evaluate_reports_queries_without_positives(ray_session, tmp_path, caplog):
    gallery = tmp_path / "product1m_gallery_g.txt"
    gallery.write_text("".join(f"g{i}#####韩国面霜{i}号#####u#####u#####L{i}\n" for i in range(6)),
                       encoding="utf-8")
    queries = tmp_path / "product1m_dev_q.txt"
    queries.write_text("q0#####面霜0号#####u#####u#####L0\nq1#####面霜1号#####u#####u#####L1\n"
                       "q2#####别的东西#####u#####u#####X\nq3#####别的#####u#####u#####Y#;#Z\n",
                       encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="egecmp_ray.retrieval.evaluate"):
        run_evaluate(str(queries), str(gallery), str(tmp_path / "e"), load_config(preset="tiny"),
                     method="tfidf")
    counts = json.loads((tmp_path / "e" / "metric_results.json").read_text())["counts"]
    assert (counts["queries"], counts["queries_without_positives"]) == (4, 2)
    assert "2 of 4 labelled queries have no positive in the gallery" in caplog.text


def test_real_dev_file_as_queries_and_gallery(ray_session, dev_file, tmp_path):
    cfg = load_config(preset="tiny")
    s = run_evaluate(str(dev_file), str(dev_file), str(tmp_path), cfg, method="tfidf")
    m = s["metrics"]
    assert m["counts"]["queries"] == 2673 and m["top10"]["mAP"] > 0.1
