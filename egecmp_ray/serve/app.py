"""Assemble the Serve application from the typed config, and run it.

One source of truth: every deployment setting (autoscaling, batching, replicas, resources)
is derived from ``serve.*`` and ``index.*`` by :func:`build_app`. The Serve config YAML that
``serve run`` / ``serve deploy`` and a KubeRay RayService carry (:func:`serve_config`) only
names this builder (``egecmp_ray.serve.app:app_builder``) and its arguments: the model
directory, the collection and the same dotted overrides the CLI takes.

Milvus: with a server URI the searcher autoscales like the encoder. With a Milvus Lite file
(the embedded default) exactly one searcher replica owns the file (Lite allows one process a
file) and batches every request into one search call; see the README for why not Lite's
server mode.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from egecmp_ray.config import Config, InputError, load_config
from egecmp_ray.data import storage
from egecmp_ray.data.validate import Limits
from egecmp_ray.model.model_dir import item_dim
from egecmp_ray.placement import gpu_worker
from egecmp_ray.retrieval.milvus_store import is_lite, require_collection

log = logging.getLogger(__name__)

APP_NAME = "egecmp"
IMPORT_PATH = "egecmp_ray.serve.app:app_builder"
BUILDER_ARGS = ("model", "collection", "config", "overrides")


def _use_gpu(cfg: Config) -> bool:
    if cfg.serve.use_gpu is not None:
        return cfg.serve.use_gpu
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def build_app(cfg: Config, model_dir: str, collection: Optional[str] = None):
    """The bound application: Ingress(Encoder, Searcher), every option from ``cfg``."""
    from egecmp_ray.serve.deployments import Encoder, Searcher
    from egecmp_ray.serve.ingress import Ingress

    s = cfg.serve
    model_dir = storage.absolute(model_dir)  # replicas do not share the driver's cwd
    dim = item_dim(model_dir)  # fails here, naming the directory, if it is not a model dir
    index = dataclasses.asdict(cfg.index)
    lite = is_lite(cfg.index.milvus_uri)
    if lite:
        index["milvus_uri"] = str(Path(cfg.index.milvus_uri).resolve())
        if not Path(index["milvus_uri"]).exists():
            raise InputError(f"index.milvus_uri {cfg.index.milvus_uri}: no such Milvus Lite file; "
                             "build it with `egecmp index --model DIR --data PATH --milvus-uri ...`")
    if cfg.index.metric == "L2":
        raise InputError("index.metric=L2: serving reads scores as similarities (higher is "
                         "closer: /compare's min_score, /recommend's thresholds), L2 distances "
                         "read the other way; index with index.metric=IP or COSINE")
    gpu = _use_gpu(cfg)
    logging_config = {"enable_access_log": s.access_log}
    encoder = Encoder.options(
        logging_config=logging_config,
        autoscaling_config={"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                            "initial_replicas": max(1, s.min_replicas),
                            "target_ongoing_requests": s.target_ongoing_requests,
                            "upscale_delay_s": s.upscale_delay_s,
                            "downscale_delay_s": s.downscale_delay_s},
        max_ongoing_requests=s.max_ongoing_requests,
        user_config={"max_batch_size": s.max_batch_size,
                     "batch_wait_timeout_s": s.batch_wait_timeout_s},
        ray_actor_options={"num_cpus": s.cpus_per_replica, "num_gpus": 1 if gpu else 0,
                           "resources": gpu_worker(cfg.cluster)},
    ).bind(model_dir, 0 if gpu else max(1, int(s.cpus_per_replica)))
    searcher_scale = ({"num_replicas": 1} if lite else {"autoscaling_config": {
        "min_replicas": 1, "max_replicas": s.searcher_max_replicas,
        "target_ongoing_requests": s.search_batch_size}})
    searcher = Searcher.options(
        **searcher_scale, logging_config=logging_config, max_ongoing_requests=4 * s.search_batch_size,
        user_config={"max_batch_size": s.search_batch_size,
                     "batch_wait_timeout_s": s.search_wait_timeout_s},
        ray_actor_options={"num_cpus": 0},  # waits on Milvus; the encoders hold the CPUs
    ).bind(index, dim, collection)
    settings = {"limits": dataclasses.asdict(Limits.from_config(cfg.data)),
                **{k: getattr(s, k) for k in ("max_body_bytes", "max_upsert_items",
                                              "compare_min_score", "compare_candidates",
                                              "recommend_min_score")}}
    return Ingress.options(num_replicas=s.ingress_replicas, logging_config=logging_config,
                           max_ongoing_requests=4 * s.max_ongoing_requests,
                           ray_actor_options={"num_cpus": 0}).bind(encoder, searcher, settings)


def app_builder(args: dict[str, Any]):
    """The ``import_path`` target of the Serve config YAML (``serve run`` / ``serve deploy`` /
    RayService): ``args`` = model, collection, config (a YAML path), overrides (dotted)."""
    unknown = sorted(set(args) - set(BUILDER_ARGS))
    if unknown or "model" not in args:
        raise InputError(f"serve config args: need 'model', may have {list(BUILDER_ARGS)}; "
                         f"unknown {unknown}")
    cfg = load_config(args.get("config"), list(args.get("overrides") or []))
    return build_app(cfg, args["model"], args.get("collection"))


def serve_config(cfg: Config, model_dir: str, collection: Optional[str] = None,
                 config_path: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The Serve config (``ServeDeploySchema``) that runs this app: the same file for
    ``serve run``, ``serve deploy`` and a RayService's ``serveConfigV2``."""
    args: dict[str, Any] = {"model": model_dir}
    if collection:
        args["collection"] = collection
    if config_path:
        args["config"] = config_path
    args["overrides"] = list(overrides)
    return {"proxy_location": "EveryNode",
            "http_options": {"host": cfg.serve.host, "port": cfg.serve.port},
            "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                              "args": args}]}


def wait_ready(url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers 200 (the model is loaded, the index non-empty)."""
    from egecmp_ray.serve.client import call

    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            status, answer = call(url, "/readyz", method="GET", timeout_s=10)
            if status == 200:
                return answer
            last = str(answer)[:300]
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s: {last}")


def start_service(cfg: Config, model_dir: str, collection: Optional[str] = None) -> str:
    """Deploy on the connected Ray cluster; returns the base URL once ``/readyz`` is 200."""
    from ray import serve

    app = build_app(cfg, model_dir, collection)
    running = serve.status().applications  # {} when Serve is not up
    if APP_NAME not in running:  # (a running app's searcher owns a Lite file: checked then)
        require_collection(cfg.index, collection)  # exit 2 before anything is deployed
    try:
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        url = f"http://{cfg.serve.host}:{cfg.serve.port}"
        wait_ready(url)
    except BaseException:
        # Take down what this call deployed (a half-started app holds the index), not an app
        # it was updating, nor Serve itself when other apps run on it.
        if APP_NAME not in running:
            try:
                if running:
                    serve.delete(APP_NAME)
                else:
                    stop_service()
            except Exception as exc:  # noqa: BLE001 - never hide the first error
                log.warning("could not take the half-started app down: %s", exc)
        raise
    return url


def stop_service() -> None:
    from ray import serve

    serve.delete(APP_NAME)
    serve.shutdown()
