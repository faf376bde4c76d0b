"""The README's main command: every stage, end to end, on the embedded defaults: synth ->
preprocess -> pretrain -> index + evaluate -> serve (a few real HTTP requests, then shut down).
"""

from __future__ import annotations

import logging
import os
import time

from egecmp_ray.config import Config
from egecmp_ray.data import storage
from egecmp_ray.data.sources import resolve_source
from egecmp_ray.data.synth_pipeline import run_synth
from egecmp_ray.entities.preprocess import run_preprocess
from egecmp_ray.retrieval.evaluate import run_evaluate
from egecmp_ray.train.pretrain import run_pretrain

log = logging.getLogger(__name__)



def run_demo(cfg: Config, work: str) -> str:
    """synth -> preprocess -> pretrain -> index + evaluate under ``work``; returns the
    summary line."""
    t0 = time.perf_counter()
    _, root = storage.resolve(work)
    synth_dir, prep_dir = storage.join(root, "synth"), storage.join(root, "prep")
    run_dir, eval_dir = storage.join(root, "pretrain"), storage.join(root, "evaluate")
    log.info("demo: [1/5] synth %d rows (preset %s) -> %s", cfg.data.rows, cfg.preset, synth_dir)
    synth = run_synth(cfg.data, synth_dir)
    log.info("demo: [2/5] preprocess (validate, entities, tokenizer, regions, graph) -> %s", prep_dir)
    prep = run_preprocess(resolve_source(synth_dir), prep_dir, cfg)
    log.info("demo: [3/5] pretrain (Ray Train + DeepSpeed ZeRO %d, %d worker(s), %s steps) -> %s",
             cfg.train.zero_stage, cfg.train.workers, cfg.train.max_steps or "all", run_dir)
    if cfg.train.workers == 1 and not cfg.train.threads_per_worker:
        # One worker reserves one CPU (the rest feed it data) but may compute on every core.
        cfg.train.threads_per_worker = os.cpu_count() or 1
    train = run_pretrain(prep_dir, run_dir, cfg)
    log.info("demo: [4/5] index the gallery split in Milvus Lite, search the queries, score -> %s",
             eval_dir)
    cfg.index.milvus_uri = storage.join(eval_dir, "milvus.db")
    ev = run_evaluate(synth_dir, synth_dir, eval_dir, cfg, method="model",
                      model_dir=train["model_dir"])
    m = ev["metrics"]
    log.info("demo: [5/5] serve the evaluated index (Ray Serve on loopback), send real requests")
    statuses = _serve_tour(cfg, train["model_dir"], synth_dir, ev["collection"])
    return (f"demo: synth {synth['rows']:,} rows -> preprocess {prep['rows_out']:,} encoded / "
            f"{prep['rows_quarantined']:,} quarantined, {prep['entities']:,} entities -> "
            f"pretrain {train['final_step']} steps ({train['samples']:,} samples) -> evaluate "
            f"{m['counts']['queries']:,} queries x {m['counts']['gallery']:,} gallery: mAP@10 "
            f"{m['top10']['mAP']:.4f} -> serve {len(statuses)} requests (statuses "
            f"{','.join(map(str, statuses))}) in {time.perf_counter() - t0:.1f} s; outputs in {root}")


def _serve_tour(cfg: Config, model_dir: str, synth_dir: str, collection: str) -> list[int]:
    """Start the service over the evaluated gallery, print a table of answers, shut it down."""
    from egecmp_ray.serve.app import start_service, stop_service
    from egecmp_ray.serve.client import free_port, port_free
    from egecmp_ray.serve.tour import requests_for, run_tour, sample_rows

    if not port_free(cfg.serve.host, cfg.serve.port):
        port = free_port(cfg.serve.host)
        log.info("demo: port %d is taken; serving on %d", cfg.serve.port, port)
        cfg.serve.port = port
    queries = sample_rows(storage.join(synth_dir, "query"))
    gallery = sample_rows(storage.join(synth_dir, "gallery"))
    url = start_service(cfg, model_dir, collection)
    try:
        table, statuses = run_tour(url, requests_for(queries, gallery))
    finally:
        stop_service()
    print(f"\nserved at {url} (shut down now):\n{table}\n", flush=True)
    return statuses
