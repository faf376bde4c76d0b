"""Serving: QPS and p50/p95/p99 latency at 1, 8 and 32 concurrent clients with dynamic
batching on and off, the Serve + HTTP overhead against calling the encoder and Milvus in-process,
QPS with 1 and 2 encoder replicas, an autoscaling trace (clients 1 -> 32 -> 1), and Milvus
Lite embedded vs its server mode.

    python benchmarks/bench_serve.py            # small preset, 10k synthetic rows, 10 s a point
    python benchmarks/bench_serve.py --quick    # tiny preset, short points: checks it runs

One run, one model (the small preset, untrained: speed does not depend on the weights), one
Milvus Lite index of the synthetic gallery; text queries from the query split. The load
generator is `egecmp_ray.serve.loadgen` (closed loop, aiohttp) in this process, on the same
cores as the service. Writes results/bench_serve.{json,md,png}.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from egecmp_ray.benchmarking import bench_parser, write_results
from egecmp_ray.config import Config, load_config
from egecmp_ray.serve.loadgen import percentiles, run_load

CLIENTS = (1, 8, 32)


def build_index(cfg: Config, work: Path, rows: int) -> tuple[str, list[str]]:
    """synth -> preprocess (vocabulary) -> an untrained model dir -> the gallery in Milvus Lite.
    Returns the model dir and valid query titles."""
    import torch

    from egecmp_ray.data.sources import resolve_source
    from egecmp_ray.data.synth_pipeline import run_synth
    from egecmp_ray.entities.preprocess import run_preprocess
    from egecmp_ray.entities.tokenizer import load_tokenizer
    from egecmp_ray.model.egecmp import EGECMP, TokenIds
    from egecmp_ray.model.model_dir import save_model_dir
    from egecmp_ray.retrieval.indexing import run_index
    from egecmp_ray.serve.tour import sample_rows

    cfg.data.rows = rows
    run_synth(cfg.data, str(work / "synth"))
    m = run_preprocess(resolve_source(str(work / "synth"), splits=["train"]), str(work / "prep"), cfg)
    cfg.model.region_dim = m["region_dim"]
    tokens = TokenIds.from_tokenizer(load_tokenizer(str(work / "prep" / "vocab" / "tokenizer.json")))
    torch.manual_seed(0)
    model_dir = work / "model"
    save_model_dir(model_dir, EGECMP(cfg.model, tokens).state_dict(), cfg, tokens,
                   work / "prep" / "vocab", None)
    run_index(str(model_dir), str(work / "synth"), cfg)
    titles = [r["title"] for r in sample_rows(str(work / "synth" / "query"), 200)]
    return str(model_dir), titles


def in_process(cfg: Config, model_dir: str, titles: list[str], n: int) -> list[dict[str, Any]]:
    """The same work without Serve or HTTP: encode one query + one Milvus search, in a loop (one
    torch thread, as an encoder replica with one CPU has); then Milvus Lite's two modes for one
    file: embedded in this process (the searcher's way) vs its gRPC server on loopback (what
    several searcher replicas would share), 1 and 64 queries a call."""
    import torch

    from egecmp_ray.model.encoder import ItemEncoder
    from egecmp_ray.model.model_dir import VOCAB_DIR, item_dim, load_model_dir
    from egecmp_ray.retrieval.milvus_store import SCALAR_FIELDS, VectorStore

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, mcfg = load_model_dir(model_dir)
    enc = ItemEncoder(model, mcfg.entities, str(Path(model_dir) / VOCAB_DIR))
    store = VectorStore(cfg.index, item_dim(model_dir))
    lat = []
    for i in range(n + 5):
        t0 = time.perf_counter()
        vec = enc.query_vectors([titles[i % len(titles)]])
        store.search(vec, 10, "", SCALAR_FIELDS)
        if i >= 5:  # warm-up
            lat.append((time.perf_counter() - t0) * 1000)
    torch.set_num_threads(threads)
    rows = [{"config": "in-process (no Serve, no HTTP)", "clients": 1, "requests": n,
             "qps": round(1000 / float(np.mean(lat)), 1), **percentiles(lat)}]
    for batch in (1, 8, 32):  # what dynamic batching can win inside one replica
        per_item = []
        for i in range(max(5, n // (4 * batch)) + 1):
            t0 = time.perf_counter()
            enc.query_vectors([titles[(i * batch + j) % len(titles)] for j in range(batch)])
            if i:
                per_item.append((time.perf_counter() - t0) * 1000 / batch)
        ms = float(np.median(per_item))
        rows.append({"config": f"encoder in-process, batch {batch} (ms a query)", "clients": 1,
                     "requests": len(per_item) * batch, "qps": round(1000 / ms, 1),
                     "p50_ms": round(ms, 2)})
    vectors = enc.query_vectors(titles[:64])
    rows += lite_modes(store, vectors, max(10, n // 10))
    store.close()
    return rows


def lite_modes(store, vectors: np.ndarray, reps: int) -> list[dict[str, Any]]:
    import subprocess
    import sys

    from pymilvus import MilvusClient

    from egecmp_ray.retrieval.milvus_store import SCALAR_FIELDS
    from egecmp_ray.serve.client import free_port

    def measure(client, mode: str) -> list[dict[str, Any]]:
        out = []
        for batch in (1, 64):
            lat = []
            for i in range(reps + 2):
                t0 = time.perf_counter()
                client.search(store.name, data=vectors[:batch].tolist(), limit=10,
                              output_fields=list(SCALAR_FIELDS))
                if i >= 2:
                    lat.append((time.perf_counter() - t0) * 1000)
            out.append({"config": f"Milvus Lite {mode}, {batch} queries a call", "clients": 1,
                        "requests": reps, "qps": round(batch * 1000 / float(np.mean(lat)), 1),
                        **percentiles(lat)})
        return out

    rows = measure(store.client, "embedded")
    copy = Path(store.cfg.milvus_uri + "-server-copy")
    shutil.copytree(store.cfg.milvus_uri, copy)
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "milvus-lite"), "server",
                               "--data-dir", str(copy), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = MilvusClient(uri=f"http://127.0.0.1:{port}")
                client.load_collection(store.name)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        rows += measure(client, "server mode (gRPC, loopback)")
        client.close()
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(copy, ignore_errors=True)
    return rows


def deploy(cfg: Config, model_dir: str, **serve_values: Any) -> str:
    from egecmp_ray.config import apply_values
    from egecmp_ray.serve.app import APP_NAME, build_app, wait_ready
    from ray import serve

    apply_values(cfg, {"serve": serve_values})
    serve.run(build_app(cfg, model_dir), name=APP_NAME, route_prefix="/")
    url = f"http://{cfg.serve.host}:{cfg.serve.port}"
    wait_ready(url)
    return url


def encoder_replicas() -> int:
    from ray import serve

    from egecmp_ray.serve.app import APP_NAME

    dep = serve.status().applications[APP_NAME].deployments["Encoder"]
    return int(dep.replica_states.get("RUNNING", 0))


def autoscale_trace(url: str, bodies: list[dict], steps: list[tuple[int, float]]
                    ) -> tuple[list[dict], dict[str, Any]]:
    """Run the load steps while sampling the encoder replica count every 0.5 s."""
    trace: list[dict] = []
    stop = threading.Event()
    t0 = time.perf_counter()
    clients_now = {"n": steps[0][0]}

    def sample() -> None:
        while not stop.is_set():
            trace.append({"t_s": round(time.perf_counter() - t0, 2), "replicas": encoder_replicas(),
                          "clients": clients_now["n"]})
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    step_starts, results = [], []
    for clients, seconds in steps:
        clients_now["n"] = clients
        step_starts.append(time.perf_counter() - t0)
        results.append(run_load(url, bodies, clients, seconds))
    stop.set()
    sampler.join()

    def first(after: float, pred) -> float | None:
        hit = next((p["t_s"] for p in trace if p["t_s"] >= after and pred(p["replicas"])), None)
        return None if hit is None else round(hit - after, 1)

    peak = max(p["replicas"] for p in trace)
    peaked = next((p["t_s"] for p in trace if p["replicas"] == peak), step_starts[2])
    down = first(max(step_starts[2], peaked), lambda r: r <= 1)
    return trace, {"scale_up_s": first(step_starts[1], lambda r: r >= 2),
                   "scale_down_s": None if down is None or peak < 2 else
                   round(max(step_starts[2], peaked) + down - step_starts[2], 1),
                   "peak_replicas": peak,
                   "errors_5xx": sum(r["errors_5xx"] for r in results)}


def plot(path: Path, rows: list[dict], trace: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for config, style in (("batched, 1 replica", "-"), ("unbatched, 1 replica", "--")):
        pts = [r for r in rows if r["config"] == config]
        for q, colour in (("p50_ms", "C0"), ("p95_ms", "C1"), ("p99_ms", "C3")):
            ax1.plot([r["clients"] for r in pts], [r[q] for r in pts], style, color=colour,
                     marker="o", label=f"{q[:3]} {config}")
    ax1.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)",
            title="/search latency")
    ax1.set_xticks(list(CLIENTS), [str(c) for c in CLIENTS])
    ax1.legend(fontsize=7)
    ax2.step([p["t_s"] for p in trace], [p["replicas"] for p in trace], where="post",
             label="encoder replicas")
    ax2.step([p["t_s"] for p in trace], [p["clients"] / 16 for p in trace], where="post",
             color="grey", alpha=0.6, label="clients / 16")
    ax2.set(xlabel="time (s)", ylabel="replicas", title="autoscaling: clients 1 -> 32 -> 1")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = bench_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=None, help="synthetic rows [10000; quick 600]")
    ap.add_argument("--seconds", type=float, default=None, help="per load point [10; quick 3]")
    args = ap.parse_args()

    from egecmp_ray.runtime import init_ray, setup_logging
    from egecmp_ray.serve.app import stop_service
    from egecmp_ray.serve.client import free_port

    setup_logging("WARNING")
    cfg = load_config(args.config, preset="tiny" if args.quick else None)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    work = Path(tempfile.mkdtemp(prefix="egecmp-bench-serve-"))
    cfg.index.milvus_uri = str(work / "milvus.db")
    cfg.serve.port = free_port()
    try:
        init_ray(metrics=True)  # as `egecmp serve` runs
        from ray import serve

        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        model_dir, titles = build_index(cfg, work, args.rows or (600 if args.quick else 10_000))
        bodies = [{"text": t, "top_k": 10} for t in titles]
        rows: list[dict[str, Any]] = []
        fixed = {"min_replicas": 1, "max_replicas": 1}
        on = {"max_batch_size": 32, "search_batch_size": 64, "max_ongoing_requests": 64}
        off = {"max_batch_size": 1, "search_batch_size": 1, "max_ongoing_requests": 64}
        for name, values in (("unbatched, 1 replica", off), ("batched, 1 replica", on)):
            url = deploy(cfg, model_dir, **fixed, **values)
            for clients in CLIENTS:
                run_load(url, bodies, clients, 1.0)  # warm the path at this concurrency
                rows.append({"config": name, **run_load(url, bodies, clients, seconds)})
                print(rows[-1], flush=True)
        url = deploy(cfg, model_dir, min_replicas=2, max_replicas=2, **on)
        rows.append({"config": "batched, 2 replicas", **run_load(url, bodies, 32, seconds)})
        print(rows[-1], flush=True)
        url = deploy(cfg, model_dir, **fixed, **off, access_log=False)
        rows.append({"config": "unbatched, 1 replica, no access log",
                     **run_load(url, bodies, 1, seconds)})
        url = deploy(cfg, model_dir, **fixed, **on, access_log=False)
        rows.append({"config": "batched, 1 replica, no access log",
                     **run_load(url, bodies, 32, seconds)})
        print(rows[-2:], flush=True)
        cfg.serve.access_log = True
        url = deploy(cfg, model_dir, min_replicas=1, max_replicas=2, target_ongoing_requests=4.0,
                     upscale_delay_s=2.0, downscale_delay_s=8.0, **on)
        step = 10.0 if args.quick else 30.0
        # The tail is long: Serve averages load over look_back_period_s (30 s) before it
        # scales down, after downscale_delay_s.
        trace, scaling = autoscale_trace(url, bodies, [(1, step / 3), (32, step), (1, 2 * step)])
        print(scaling, flush=True)
        stop_service()
        # After the service: a Milvus Lite file has one owner process, and this one keeps it.
        rows[:0] = in_process(cfg, model_dir, titles, 50 if args.quick else 300)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def row(config: str, clients: int) -> dict:
        return next(r for r in rows if r["config"] == config and r["clients"] == clients)

    b32, u32 = row("batched, 1 replica", 32), row("unbatched, 1 replica", 32)
    summary = {
        "qps_32_batched": b32["qps"], "qps_32_unbatched": u32["qps"],
        "batching_speedup": round(b32["qps"] / u32["qps"], 2) if u32["qps"] else None,
        "p50_ms_32": b32["p50_ms"], "p99_ms_32": b32["p99_ms"],
        "serve_overhead_ms": round(row("unbatched, 1 replica", 1)["p50_ms"] - rows[0]["p50_ms"], 2),
        "encoder_batch32_speedup_in_process": round(
            row("encoder in-process, batch 1 (ms a query)", 1)["p50_ms"]
            / row("encoder in-process, batch 32 (ms a query)", 1)["p50_ms"], 2),
        "qps_32_two_replicas": row("batched, 2 replicas", 32)["qps"],
        "serve_overhead_ms_no_access_log": round(
            row("unbatched, 1 replica, no access log", 1)["p50_ms"] - rows[0]["p50_ms"], 2),
        "qps_32_batched_no_access_log": row("batched, 1 replica, no access log", 32)["qps"],
        "scale_up_s": scaling["scale_up_s"], "scale_down_s": scaling["scale_down_s"],
        "errors_5xx": sum(r.get("errors_5xx", 0) for r in rows) + scaling["errors_5xx"],
    }
    notes = ("Serve overhead = p50 of one client over HTTP, batching off, minus p50 of the same "
             "encode + search in-process. The load generator shares the cores with the service. "
             f"Autoscaling trace (t_s, replicas, clients): {trace}")
    out = Path(args.out)
    write_results(out, "serve", rows, {**summary, "autoscale": scaling},
                  ["config", "clients", "requests", "qps", "p50_ms", "p95_ms", "p99_ms",
                   "errors_5xx"], notes)
    plot(out / "bench_serve.png", rows, trace)
    print(summary)


if __name__ == "__main__":
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()
