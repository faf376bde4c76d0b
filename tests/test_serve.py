"""The Ray Serve app on loopback: the API, every refused input, upsert/delete, a replica killed
under traffic, and a load test. Real Serve, real HTTP, a real Milvus Lite index of the tiny
gallery, an untrained tiny model (the serving path, not retrieval quality, is under test)."""

import base64
import io
import json
import math
import threading
import time
import urllib.parse
import urllib.request

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from egecmp_ray.config import load_config
from egecmp_ray.data.validate import Limits, row_problem
from egecmp_ray.retrieval.indexing import run_index
from egecmp_ray.retrieval.milvus_store import VectorStore, escape, require_collection
from egecmp_ray.serve.app import serve_config, start_service, stop_service
from egecmp_ray.serve.client import call, free_port
from egecmp_ray.serve.loadgen import run_load
from egecmp_ray.serve.recommend import group_instances
from egecmp_ray.serve.schemas import Filter
from egecmp_ray.serve.validation import RequestError, filter_expression

MAX_BODY = 200_000
MAX_IMAGE = 60_000


@pytest.fixture(scope="module")
def service(prepared, tiny_model_dir, tmp_path_factory):
    """(base url, valid gallery rows): the app deployed once for the module, shut down after."""
    tmp, _, _, _ = prepared
    db = tmp_path_factory.mktemp("serve") / "items.db"
    cfg = load_config(preset="tiny", overrides=[
        f"index.milvus_uri={db}", f"serve.port={free_port()}", "serve.min_replicas=1",
        "serve.max_replicas=1", "serve.cpus_per_replica=0.5", f"serve.max_body_bytes={MAX_BODY}",
        f"data.max_image_bytes={MAX_IMAGE}", "serve.max_upsert_items=4"])
    run_index(str(tiny_model_dir), str(tmp / "synth"), cfg)
    gallery = [r for f in sorted((tmp / "synth" / "gallery").glob("*.parquet"))
               for r in pq.read_table(f).to_pylist() if row_problem(r, Limits()) is None]
    url = start_service(cfg, str(tiny_model_dir))
    yield url, gallery
    stop_service()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


# (path, body or raw bytes, status, field named in the error)
BAD = [
    ("/search", b"{not json", 422, "body"),
    ("/search", {"text": "   "}, 422, "text"),
    ("/search", {}, 422, "body"),
    ("/search", {"text": "x" * 600}, 422, "text"),
    ("/search", {"image": "@@not base64@@"}, 422, "image"),
    ("/search", {"image": b64(b"\x89PNG but not an image")}, 422, "image"),
    ("/search", {"image": b64(png(4000, 2))}, 422, "image"),
    ("/search", {"image": b64(bytes(MAX_IMAGE + 10))}, 413, "image"),
    ("/search", {"text": "面霜", "top_k": 0}, 422, "top_k"),
    ("/search", {"text": "面霜", "top_k": -3}, 422, "top_k"),
    ("/search", {"text": "面霜", "top_k": 10**9}, 422, "top_k"),
    ("/search", {"text": "面霜", "top_k": "5"}, 422, "top_k"),
    ("/search", {"text": "面霜", "top_k": 2.5}, 422, "top_k"),
    ("/search", {"text": "面霜", "colour": "red"}, 422, "colour"),
    ("/search", {"text": "面霜", "filter": {"category": "no such category"}}, 422, "filter.category"),
    ("/search", {"text": "面霜", "filter": {"category": 'x" or category != "'}}, 422, "filter.category"),
    ("/search", {"text": "！！【】 "}, 422, "text"),  # nothing left once cleaned
    ("/search", {"text": "面霜", "filter": {"price_min": "cheap"}}, 422, "filter.price_min"),
    ("/search", b'{"text": "x", "filter": {"price_max": NaN}}', 422, "filter.price_max"),
    ("/search", {"text": "面霜", "filter": {"price_min": 9, "price_max": 1}}, 422, "filter"),
    ("/search", {"text": "面霜", "mode": "sparse"}, 422, "mode"),
    ("/search", {"text": "x" * (MAX_BODY + 1)}, 413, "body"),
    ("/compare", {"id": "no-such-item"}, 404, "id"),
    ("/compare", {"id": "it's"}, 404, "id"),  # a quote in an id: not a broken expression
    ("/compare", {"id": "a", "text": "b"}, 422, "body"),
    ("/recommend", {"top_k": 3}, 422, "body"),
    ("/items", {"items": []}, 422, "items"),
    ("/items", {"items": [{"id": "a/b", "title": "t"}]}, 422, "items[0]"),
    ("/items", {"items": [{"id": "a", "title": "t"}, {"id": "a", "title": "u"}]}, 422, "items[1].id"),
    ("/items", {"items": [{"id": f"i{i}", "title": "t"} for i in range(5)]}, 413, "items"),
    ("/items", {"items": [{"id": "a", "title": "t", "price": -1}]}, 422, "items.0.price"),
]


def test_every_bad_input_gets_its_4xx_and_the_service_keeps_answering(service):
    url, gallery = service
    for path, body, status, field in BAD:
        raw = body if isinstance(body, bytes) else None
        got, answer = call(url, path, None if raw else body, raw=raw)
        assert got == status, (path, body if raw else str(body)[:200], answer)
        assert answer["detail"] and any(d["field"] == field for d in answer["detail"]), answer
        assert all(d["message"] for d in answer["detail"])
    assert call(url, "/items/no-such-item", method="DELETE")[0] == 404
    status, answer = call(url, "/search", {"text": gallery[0]["title"]})
    assert status == 200 and len(answer["hits"]) == 10


def test_search_by_text_and_by_image(service):
    url, gallery = service
    item = next(r for r in gallery if r["image"] is not None)
    # Both modalities reproduce the indexed vector exactly: the item itself, two unit halves.
    status, both = call(url, "/search", {"text": item["title"], "image": b64(item["image"])})
    assert status == 200 and both["hits"][0]["id"] == item["item_id"]
    assert both["hits"][0]["score"] == pytest.approx(2.0, abs=1e-3)
    assert both["hits"][0]["label"] == item["labels"][0]
    for query in ({"text": item["title"]}, {"image": b64(item["image"])}):
        status, answer = call(url, "/search", {**query, "top_k": 5})
        scores = [h["score"] for h in answer["hits"]]
        assert status == 200 and len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert all(-1.0 - 1e-4 <= x <= 1.0 + 1e-4 for x in scores)  # one modality: one half


def test_hybrid_search_fuses_dense_and_bm25_and_keeps_filters(service):
    url, gallery = service
    item = next(r for r in gallery if r["image"] is not None)
    status, answer = call(url, "/search", {"text": item["title"], "mode": "hybrid", "top_k": 5})
    assert status == 200 and answer["mode"] == "hybrid" and len(answer["hits"]) == 5
    assert item["item_id"] in [h["id"] for h in answer["hits"]]  # near the top on both sides
    cat = item["category"]
    status, answer = call(url, "/search", {"text": item["title"], "mode": "hybrid", "top_k": 50,
                                           "filter": {"category": cat}})
    assert status == 200 and {h["category"] for h in answer["hits"]} == {cat}
    status, answer = call(url, "/search", {"image": b64(item["image"]), "mode": "hybrid"})
    assert status == 200 and answer["hits"]  # no text: the dense side alone


def test_filters_are_applied(service):
    url, gallery = service
    cat = gallery[0]["category"]
    status, answer = call(url, "/search", {"text": "面霜 精华", "top_k": 50,
                                           "filter": {"category": cat, "price_max": 1e6}})
    assert status == 200 and answer["hits"]
    assert {h["category"] for h in answer["hits"]} == {cat}
    prices = sorted(r["price"] for r in gallery)
    lo, hi = prices[len(prices) // 4], prices[3 * len(prices) // 4]
    status, answer = call(url, "/search", {"text": "面霜", "top_k": 100,
                                           "filter": {"price_min": lo, "price_max": hi}})
    assert status == 200 and answer["hits"]
    assert all(lo <= h["price"] <= hi for h in answer["hits"])


def test_compare_lists_other_sellers_cheapest_first(service):
    url, gallery = service
    item = gallery[0]
    status, answer = call(url, "/compare", {"id": item["item_id"], "top_k": 20, "min_score": 0.0})
    assert status == 200 and answer["min_score"] == 0.0 and answer["offers"]
    assert item["item_id"] not in [o["id"] for o in answer["offers"]]
    prices = [o["price"] for o in answer["offers"]]
    assert prices == sorted(prices)
    assert all(o["score"] >= 0.0 for o in answer["offers"])
    status, answer = call(url, "/compare", {"text": item["title"], "top_k": 5})
    assert status == 200 and answer["min_score"] == 0.5


def test_recommend_groups_a_bundle_per_instance(service):
    url, gallery = service
    bundle = f"{gallery[0]['title']} 加 {gallery[1]['title']}"
    status, answer = call(url, "/recommend", {"text": bundle, "top_k": 3})
    assert status == 200 and answer["instances"]
    ids = [h["id"] for inst in answer["instances"] for h in inst["hits"]]
    assert len(ids) == len(set(ids))  # an item is listed under one instance only
    assert all(inst["span"] and len(inst["hits"]) <= 3 for inst in answer["instances"])


def test_group_instances_merges_spans_that_name_one_product():
    def hit(i, label, score):
        return {"id": i, "label": label, "score": score}

    groups = group_instances(
        ["sk2", "神仙水", "ahc", "正品"],
        [[hit("a", "SK2 水", 0.9), hit("b", "SK2 水", 0.8)],
         [hit("b", "SK2 水", 0.95), hit("c", "AHC 霜", 0.6)],
         [hit("c", "AHC 霜", 0.9), hit("a", "SK2 水", 0.4)],
         [hit("d", "X", 0.1)]],
        min_score=0.3, top_k=5)
    assert [g["span"] for g in groups] == ["sk2 神仙水", "ahc"]
    assert [h["id"] for h in groups[0]["hits"]] == ["b", "a"]
    assert [h["id"] for h in groups[1]["hits"]] == ["c"]


def test_filter_expressions_come_from_validated_values_only():
    known = {'精华 "液"', "面霜"}
    expr = filter_expression(Filter(category='精华 "液"', price_min=1.5), known)
    assert expr == 'category == "精华 \\"液\\"" and price >= 1.500000'
    with pytest.raises(RequestError, match="unknown category"):
        filter_expression(Filter(category='面霜" or category != "'), known)
    assert escape("a\\b\n") == "a\\\\b\\n"
    # an unknown price is stored as -1: a price_max alone must not let it through
    assert filter_expression(Filter(price_max=800), known) == \
        "price >= 0.000000 and price <= 800.000000"
    assert not math.isnan(Filter(price_max=3).price_max)


def test_upsert_is_searchable_and_delete_removes_it(service):
    url, gallery = service
    # Text-only items: a text query then reproduces the indexed vector (no image half).
    new = [{"id": "api-item-1", "title": "全新测试品牌 独家 极光 精华霜", "price": 12.5,
            "category": gallery[0]["category"]},
           {"id": "api-item-2", "title": "另一个 测试 商品 蓝色 面霜", "image": b64(png(64, 64))}]
    status, answer = call(url, "/items", {"items": new})
    assert status == 200 and answer["upserted"] == 2
    status, found = call(url, "/search", {"text": new[0]["title"], "top_k": 3})
    assert found["hits"][0]["id"] == "api-item-1" and found["hits"][0]["price"] == 12.5
    assert found["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    status, found = call(url, "/search", {"text": new[1]["title"], "image": new[1]["image"]})
    assert found["hits"][0]["id"] == "api-item-2"
    # An id that once widened the delete expression to another item's id
    sneaky = urllib.parse.quote("nope','api-item-1", safe="")
    assert call(url, f"/items/{sneaky}", method="DELETE")[0] == 404
    status, found = call(url, "/compare", {"id": "api-item-1", "min_score": -1.0})
    assert status == 200  # still there
    for item in new:
        assert call(url, f"/items/{item['id']}", method="DELETE") == (200, {"deleted": item["id"]})
    status, found = call(url, "/search", {"text": new[0]["title"], "top_k": 3})
    assert status == 200 and "api-item-1" not in [h["id"] for h in found["hits"]]


def test_health_readiness_and_openapi(service):
    url, _ = service
    assert call(url, "/healthz", method="GET") == (200, {"status": "ok"})
    status, ready = call(url, "/readyz", method="GET")
    assert status == 200 and ready["items"] > 0
    with urllib.request.urlopen(url + "/openapi.json") as r:
        paths = json.loads(r.read())["paths"]
    assert {"/search", "/compare", "/recommend", "/items", "/items/{item_id}", "/readyz"} <= set(paths)
    with urllib.request.urlopen(url + "/docs") as r:
        assert r.status == 200


@pytest.mark.slow
def test_a_killed_encoder_replica_is_replaced_and_traffic_recovers(service):
    import ray
    from ray import serve

    url, gallery = service
    bodies = [{"text": r["title"], "top_k": 5} for r in gallery[:20]]
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "Encoder" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
    assert replicas
    result = {}
    load = threading.Thread(target=lambda: result.update(run_load(url, bodies, 4, 8.0)))
    load.start()
    time.sleep(2.0)
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    load.join()
    failed = result["requests"] - result["ok"] + sum(result["client_errors"].values())
    assert result["ok"] > 0 and failed <= 4, result  # in-flight calls are retried on the new one
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dep = serve.status().applications["egecmp"].deployments["Encoder"]
        if dep.status == "HEALTHY" and dep.replica_states.get("RUNNING", 0) >= 1:
            break
        time.sleep(0.5)
    assert call(url, "/search", bodies[0])[0] == 200


def _load_test(service, users: int, seconds: float):
    url, gallery = service
    bodies = [{"text": r["title"], "top_k": 10} for r in gallery[:50]]
    result = run_load(url, bodies, users, seconds)
    assert result["errors_5xx"] == 0 and not result["client_errors"], result
    assert result["ok"] == result["requests"] > users, result


def test_load_short(service):
    _load_test(service, users=8, seconds=5.0)


@pytest.mark.slow
def test_load_32_users_60_s(service):
    _load_test(service, users=32, seconds=60.0)


def test_serve_config_is_a_valid_serve_deploy_schema(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    cfg = load_config(preset="tiny", overrides=["serve.port=8123"])
    doc = serve_config(cfg, "/models/m", "items", None, ["serve.max_replicas=4"])
    schema = ServeDeploySchema.model_validate(yaml.safe_load(yaml.safe_dump(doc)))
    app = schema.applications[0]
    assert app.import_path == "egecmp_ray.serve.app:app_builder"
    assert app.args == {"model": "/models/m", "collection": "items",
                        "overrides": ["serve.max_replicas=4"]}
    assert schema.http_options.port == 8123 and schema.http_options.host == "127.0.0.1"


def test_write_config_round_trips_through_the_app_builder(tiny_model_dir, tmp_path):
    """`egecmp serve --write-config` -> a Serve config whose args rebuild the same app
    (what `serve run` / `serve deploy` / a RayService would do), and a missing index is named."""
    from click.testing import CliRunner
    from ray.serve.schema import ServeDeploySchema

    from egecmp_ray.cli import cli
    from egecmp_ray.config import InputError
    from egecmp_ray.serve.app import app_builder

    db = tmp_path / "items.db"
    out = tmp_path / "serve_app.yaml"
    result = CliRunner().invoke(cli, ["serve", "--model", str(tiny_model_dir), "--milvus-uri",
                                      str(db), "--port", "8321", "--preset", "tiny",
                                      "serve.max_replicas=3", "--write-config", str(out)])
    assert result.exit_code == 0, result.output
    schema = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    args = schema.applications[0].args
    assert schema.http_options.port == 8321
    assert "serve.max_replicas=3" in args["overrides"] and "preset=tiny" in args["overrides"]
    with pytest.raises(InputError, match="no such Milvus Lite file"):
        app_builder(args)
    index = load_config(preset="tiny", overrides=[f"index.milvus_uri={db}"]).index
    VectorStore(index, dim=4).close()  # the default collection, empty
    with pytest.raises(InputError, match="index.metric=L2"):
        app_builder({**args, "overrides": [*args["overrides"], "index.metric=L2"]})
    app = app_builder(args)
    assert type(app).__name__ == "Application"
    # Serving opens a collection, never creates one: `egecmp serve` checks before deploying,
    # the searcher replica again (`serve run` of a YAML); a typo is named, with what there is
    with pytest.raises(InputError, match="no collection 'itemz' .*holds 'egecmp_items'"):
        require_collection(index, "itemz")
    with pytest.raises(InputError, match="no collection 'itemz'"):
        VectorStore(index, dim=4, collection="itemz", create=False)
    require_collection(index)
    store = VectorStore(index, dim=4, create=False)
    assert sorted(store.client.list_collections()) == ["egecmp_items"]  # nothing made
    store.close()
    with pytest.raises(InputError, match="unknown"):
        app_builder({**args, "modle": "x"})


@pytest.mark.slow
def test_egecmp_serve_blocks_answers_and_stops_cleanly_on_ctrl_c(service, tiny_model_dir, tmp_path):
    """The CLI as a user runs it (its own local Ray): /search by text and by image, then Ctrl-C."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from egecmp_ray.serve.app import wait_ready

    _, gallery = service
    item = next(r for r in gallery if r["image"] is not None)
    db = tmp_path / "own.db"
    # A Lite file of its own, written by a short-lived process (a Lite file has one owner).
    subprocess.run([sys.executable, "-c", f"""
import numpy as np
from egecmp_ray.config import load_config
from egecmp_ray.model.model_dir import item_dim
from egecmp_ray.retrieval.milvus_store import VectorStore
cfg = load_config(preset="tiny", overrides=["index.milvus_uri={db}"])
dim = item_dim({str(tiny_model_dir)!r})
v = np.random.default_rng(0).normal(size=(5, dim)).astype("float32")
VectorStore(cfg.index, dim).upsert({{"id": [f"i{{i}}" for i in range(5)], "vector": v,
    "label": ["l"] * 5, "title": ["t"] * 5, "price": [1.0] * 5, "category": ["c"] * 5}})
"""], check=True, timeout=120)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_tmp = tempfile.mkdtemp(prefix="egr-")  # short: pytest's paths overflow Ray's sockets
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parents[1] / "jobs" / "serve.py"), "--model",
         str(tiny_model_dir), "--milvus-uri", str(db), "--port", str(port), "--preset", "tiny",
         "serve.cpus_per_replica=0.25"],
        env={**env, "RAY_TMPDIR": ray_tmp}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    answers = []
    try:
        own = f"http://127.0.0.1:{port}"
        wait_ready(own, timeout_s=180)
        for query in ({"text": item["title"]}, {"image": b64(item["image"])}):
            answers.append(call(own, "/search", {**query, "top_k": 3}))
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert [(s, len(a["hits"])) for s, a in answers] == [(200, 3), (200, 3)], out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    assert "shut down cleanly" in out  # after start-up, or interrupted during its last poll


def test_an_encoder_replica_runs_every_torch_call_on_one_thread(tiny_model_dir, monkeypatch):
    """The model load, the warm-up and ``encode_many`` (which the batched ``encode`` awaits;
    ``@serve.batch`` itself needs a replica, the app tests run it), from the event loop or
    another thread, all run on the replica's one torch thread (a second thread running torch
    opens a second OpenMP pool, and with more pool threads than CPUs libgomp stops
    spin-waiting), and the vectors are those of the encoder called directly."""
    import asyncio
    import threading

    import numpy as np

    from egecmp_ray.serve import deployments

    class Uncounted:  # Serve's metrics need a replica context; the class runs here without one
        def observe(self, value):
            pass

    monkeypatch.setattr(deployments, "_batch_histogram", lambda name: Uncounted())
    cls, seen = deployments.Encoder.func_or_class, []
    load = cls._load
    monkeypatch.setattr(cls, "_load", lambda self, *a: seen.append(threading.get_ident())
                        or load(self, *a))
    enc = cls(str(tiny_model_dir), 1)
    (torch_thread,) = enc._torch._threads
    direct = enc.encoder.query_vectors
    enc.encoder.query_vectors = lambda *a: seen.append(threading.get_ident()) or direct(*a)
    queries = [("红色 连衣裙", None), ("苹果 手机壳", None)]

    async def calls():
        one = await enc.encode_many(queries)
        two = await asyncio.to_thread(lambda: asyncio.run(enc.encode_many(queries[:1])))
        return one, two

    one, two = asyncio.run(calls())
    # the load (the warm-up runs inside it, before query_vectors was wrapped), then two calls
    assert len(seen) == 3 and set(seen) == {torch_thread.ident}
    np.testing.assert_allclose(one, direct(["红色 连衣裙", "苹果 手机壳"], [None, None]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two, one[:1], rtol=1e-5, atol=1e-6)


def test_a_searcher_finds_categories_another_writer_added(tmp_path, monkeypatch):
    """With a Milvus server, items reach the collection through other searcher replicas or
    `egecmp index`: a category this replica has not seen is looked up before a 422."""
    import asyncio
    import dataclasses

    from egecmp_ray.serve import deployments

    index = load_config(preset="tiny", overrides=[f"index.milvus_uri={tmp_path / 'm.db'}"]).index
    VectorStore(index, dim=4, collection="c").close()
    searcher = deployments.Searcher.func_or_class(dataclasses.asdict(index), 4, "c")
    row = {"id": ["a"], "vector": [[1.0, 0, 0, 0]], "label": [""], "title": ["t"],
           "price": [1.0], "category": ["late"]}
    lookups = []
    has = searcher.store.has_category
    monkeypatch.setattr(searcher.store, "has_category", lambda c: lookups.append(c) or has(c))
    assert "late" not in asyncio.run(searcher.categories("late"))
    searcher.store.upsert(row)  # another writer: not through this replica
    assert "late" not in asyncio.run(searcher.categories("late"))  # looked up again in 5 s
    assert lookups == ["late"]
    monkeypatch.setattr(deployments, "CATEGORY_RECHECK_S", 0.0)
    assert "late" in asyncio.run(searcher.categories("late"))
    assert "late" in asyncio.run(searcher.categories("late")) and lookups == ["late", "late"]
    searcher.store.upsert({**row, "id": ["b"], "category": [""]})
    assert "" not in asyncio.run(searcher.categories(""))  # no category is not a category
    searcher.store.close()
    searcher.store = None
