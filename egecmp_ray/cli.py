"""The ``egecmp`` command line. ``jobs/*.py`` call the same commands for ``ray job submit``.

Every command takes ``--config FILE.yaml``, ``--preset``, and dotted overrides either as
``--set model.hidden=256`` or bare ``model.hidden=256``. Exit codes: 0 success, 2 bad
arguments or config, 1 a failed run. The last line printed is a one-line summary.
"""

from __future__ import annotations

import functools
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import click

from egecmp_ray.config import PRESETS, Config, ConfigError, InputError, apply_values, load_config

log = logging.getLogger("egecmp")


def _config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --config/--preset/--set/OVERRIDES... and hand the command a built ``cfg``."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  help="YAML config file (sections: data, entities, model, train, index, serve, "
                       "cluster).")
    @click.option("--preset", type=click.Choice(PRESETS), default=None,
                  help="Size preset the config starts from [default: the file's, else small].")
    @click.option("--set", "set_overrides", multiple=True, metavar="KEY=VALUE",
                  help="Dotted override, e.g. --set data.rows=5000 (repeatable).")
    @click.option("--log-level", default="INFO", show_default=True,
                  type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
    @click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
    @functools.wraps(fn)
    def wrapper(config_path: Optional[str], preset: Optional[str],
                set_overrides: Sequence[str], overrides: Sequence[str], log_level: str,
                **kwargs: Any) -> Any:
        from egecmp_ray import placement
        from egecmp_ray.runtime import setup_logging

        setup_logging(log_level)
        try:
            cfg = load_config(config_path, [*set_overrides, *overrides], preset=preset)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        placement.configure(cfg.cluster)  # which worker group this command's Ray Data work asks
        try:
            return fn(cfg=cfg, **kwargs)
        except (click.ClickException, click.exceptions.Exit, KeyboardInterrupt):
            raise
        except (ConfigError, InputError, FileNotFoundError) as exc:
            # Input the user can fix (a path, a flag value): say what, exit 2.
            raise click.UsageError(str(exc)) from None
        except Exception as exc:
            log.exception("run failed")
            raise click.ClickException(f"run failed: {type(exc).__name__}: {exc}") from None

    return wrapper


def _set(cfg: Config, section: str, **values: Any) -> None:
    """Apply the flags that were given onto the config (type-checked, re-validated)."""
    try:
        apply_values(cfg, {section: {k: v for k, v in values.items() if v is not None}})
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _out_dir(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    """--out callback: a file or an unwritable place fails at parse time, before Ray starts."""
    from egecmp_ray.data.storage import check_out_dir

    if value is not None:
        try:
            check_out_dir(value)
        except InputError as exc:
            raise click.UsageError(str(exc), ctx) from None
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="egecmp-ray")
def cli() -> None:
    """egecmp: EGE-CMP pretraining and instance-level product retrieval on Ray.

    Data flow: synth (or Product1M .txt) -> ingest/validate -> preprocess -> pretrain ->
    index/evaluate -> serve. Jobs connect to RAY_ADDRESS when set, else start a local Ray.
    """


@cli.command()
@click.option("--rows", type=int, default=None, help="Rows over all splits [config data.rows].")
@click.option("--out", required=True, callback=_out_dir,
              help="Output directory or URI (s3://..., gs://...).")
@click.option("--seed", type=int, default=None, help="Generator seed [config data.seed].")
@click.option("--no-images", is_flag=True, help="Text-only rows (no rendered images).")
@click.option("--overwrite", is_flag=True,
              help="Regenerate every shard (default: keep shards a previous run of the same "
                   "config completed, i.e. resume).")
@_config_options
def synth(cfg: Config, rows: Optional[int], out: str, seed: Optional[int], no_images: bool,
          overwrite: bool) -> None:
    """Generate the synthetic Product1M look-alike as sharded Parquet.

    Writes OUT/{train,query,gallery}/part-NNNNN.parquet and OUT/manifest.json. Generation runs
    as a Ray Data pipeline (range + map_batches); memory stays bounded at any row count.
    """
    from egecmp_ray.data.synth_pipeline import run_synth
    from egecmp_ray.runtime import init_ray

    _set(cfg, "data", rows=rows, seed=seed, images=False if no_images else None)
    init_ray()
    m = run_synth(cfg.data, out, overwrite=overwrite)
    s = m["splits"]
    click.echo(
        f"synth: {m['rows']:,} rows (train {s['train']['rows']:,} / query {s['query']['rows']:,} / "
        f"gallery {s['gallery']['rows']:,}, {m['rows_corrupt']} injected bad) in "
        f"{m['elapsed_s']:.1f} s ({m['rows_per_s']:,.0f} rows/s), "
        f"{m['shards_skipped_on_resume']} shards reused -> {out}")


def _input_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--input/--out/--images/--split: what every command reading raw samples takes."""
    for option in reversed([
        click.option("--input", "input_path", required=True,
                     help="Product1M .txt file, a synth or ingest output dir, or a Parquet dir."),
        click.option("--out", required=True, callback=_out_dir,
                     help="Output directory or URI (s3://..., gs://...)."),
        click.option("--images", "images_dir", default=None,
                     help="Image directory for .txt inputs (<dir>/<item_id>.jpg); rows without "
                          "one are kept, flagged has_image=false."),
        click.option("--split", default=None,
                     help="Split of a .txt input [default: from its file name]."),
    ]):
        fn = option(fn)
    return fn


@cli.command()
@_input_options
@_config_options
def ingest(cfg: Config, input_path: str, out: str, images_dir: Optional[str],
           split: Optional[str]) -> None:
    """Read and validate an input: good rows to OUT/rows, bad rows to OUT/quarantine.

    Each quarantined row keeps its fields (and the raw line when it could not be parsed) plus
    a `reason`. OUT/manifest.json has rows_in = rows_out + rows_quarantined.
    """
    from egecmp_ray.data.ingest import run_ingest
    from egecmp_ray.data.sources import resolve_source
    from egecmp_ray.runtime import init_ray

    source = resolve_source(input_path)
    init_ray()
    m = run_ingest(source, out, cfg.data, images_dir=images_dir, split=split)
    click.echo(
        f"ingest: {m['rows_in']:,} rows in, {m['rows_out']:,} kept ({m['rows_without_image']:,} "
        f"without image), {m['rows_quarantined']:,} quarantined {m['quarantine_reasons']} in "
        f"{m['elapsed_s']:.1f} s -> {out}")


@cli.command()
@_input_options
@click.option("--tokenizer", "tokenizer_path", default=None,
              help="Local tokenizer.json or a directory with vocab.txt (e.g. a BERT checkpoint's) "
                   "[default: train a WordPiece tokenizer on the corpus].")
@click.option("--extractor", default=None,
              help="Entity extractor: 'jieba' or 'package.module:function' [config entities.extractor].")
@_config_options
def preprocess(cfg: Config, input_path: str, out: str, images_dir: Optional[str],
               split: Optional[str], tokenizer_path: Optional[str], extractor: Optional[str]) -> None:
    """Raw samples -> training-ready shards, entity vocabulary and entity graph (Ray Data).

    Writes OUT/shards/ (token ids, entity ids, region features, masks), OUT/vocab/
    (entities.tsv: entity<TAB>count, line number = node id; tokenizer.json; vocab.txt),
    OUT/graph/ (edge lists, graph.pt, GAE positive/negative sets), OUT/quarantine/ and
    OUT/manifest.json. Re-running on the same input and config gives the same outputs.
    """
    from egecmp_ray.data.sources import resolve_source
    from egecmp_ray.entities.preprocess import run_preprocess
    from egecmp_ray.runtime import init_ray

    _set(cfg, "entities", extractor=extractor)
    source = resolve_source(input_path)
    init_ray(keep_idle_workers=True)  # its stages reuse each other's workers
    m = run_preprocess(source, out, cfg, images_dir=images_dir, split=split,
                       tokenizer_path=tokenizer_path)
    click.echo(
        f"preprocess: {m['rows_in']:,} rows in, {m['rows_out']:,} encoded, "
        f"{m['rows_quarantined']:,} quarantined; {m['entities']:,} entities, "
        f"{m['edges_pmi']:,} PMI + {m['edges_knn']:,} kNN + {m['edges_context']:,} context edges, "
        f"tokenizer {m['tokenizer_vocab']:,} tokens, in {m['elapsed_s']:.1f} s ({m['rows_per_s']:,.0f} rows/s) -> {out}")


@cli.command()
@click.option("--out", default=None, callback=_out_dir,
              help="Working directory [default: a new temp dir, kept].")
@click.option("--rows", type=int, default=None, help="Synthetic rows [config data.rows].")
@click.option("--max-steps", type=int, default=100, show_default=True,
              help="Pretraining steps (0: all of train.epochs); the default keeps the demo "
                   "under 10 minutes on 2 CPU cores.")
@_config_options
def demo(cfg: Config, out: Optional[str], rows: Optional[int], max_steps: int) -> None:
    """Run the whole pipeline end to end on the embedded defaults (local Ray, synthetic data,
    Milvus Lite): synth -> preprocess -> pretrain -> index + evaluate, in OUT (or a temp dir)."""
    from egecmp_ray.demo import run_demo
    from egecmp_ray.runtime import default_tmpdir, init_ray

    _set(cfg, "data", rows=rows)
    _set(cfg, "train", max_steps=max_steps)
    work = out or tempfile.mkdtemp(prefix="egecmp-demo-", dir=default_tmpdir())
    init_ray()
    summary = run_demo(cfg, work)
    click.echo(summary)


@cli.command()
@click.option("--data", "data", required=True, type=click.Path(file_okay=False),
              help="A preprocess output directory or URI (shards/, vocab/, graph/, manifest.json).")
@click.option("--out", required=True, callback=_out_dir,
              help="Output dir or URI (s3://...): ray_results/ (checkpoints, unless "
                   "train.storage_path), metrics.jsonl, model/, pretrain.json.")
@click.option("--workers", type=int, default=None, help="Ray Train workers [config train.workers].")
@click.option("--zero-stage", type=click.IntRange(0, 3), default=None,
              help="DeepSpeed ZeRO stage [config train.zero_stage].")
@click.option("--max-steps", type=int, default=None, help="Stop after N steps [config train.max_steps].")
@click.option("--run-name", default="pretrain", show_default=True,
              help="Ray Train run name: re-running with the same --out and name resumes it.")
@_config_options
def pretrain(cfg: Config, data: str, out: str, workers: Optional[int], zero_stage: Optional[int],
             max_steps: Optional[int], run_name: str) -> None:
    """Pretrain EGE-CMP with Ray Train + DeepSpeed ZeRO on preprocessed shards.

    Each worker streams its share of DATA/shards (Ray Data, shuffled per epoch) into a
    DeepSpeed engine (NCCL + bf16 on GPUs, gloo + fp32 on CPU). Checkpoints go to
    OUT/ray_results/<run-name>/; re-running the same command resumes from the latest one
    (it prints "resumed from <checkpoint>"); a failed worker restarts the run from it
    (train.max_failures). Metrics: OUT/metrics.jsonl. Inference weights: OUT/model/.
    """
    from egecmp_ray.runtime import init_ray
    from egecmp_ray.train.pretrain import run_pretrain

    _set(cfg, "train", workers=workers, zero_stage=zero_stage, max_steps=max_steps)
    init_ray()
    s = run_pretrain(data, out, cfg, run_name=run_name)
    resumed = f", resumed from {s['resumed_from']}" if s["resumed_from"] else ""
    click.echo(f"pretrain: {s['final_step']} steps, {s['samples']:,} samples on {s['workers']} "
               f"{'GPU' if s['use_gpu'] else 'CPU'} worker(s), ZeRO {s['zero_stage']}, in "
               f"{s['elapsed_s']:.1f} s{resumed} -> {s['model_dir']}")


def _milvus_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("--milvus-uri", default=None,
                  help="A Milvus Lite file (path.db) or a server URI (http://host:19530) "
                       "[config index.milvus_uri].")
    @click.option("--token", default=None, help="Milvus server token [config index.token].")
    @click.option("--collection", default=None, help="Collection name [config index.collection].")
    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        return fn(**kwargs)

    return wrapper


@cli.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="A model directory or URI written by pretrain (OUT/model).")
@click.option("--data", required=True,
              help="Items to index: a synth dir (its gallery split), Parquet rows or a Product1M .txt.")
@click.option("--workers", type=int, default=None, help="Encoder replicas [config index.embed_workers].")
@click.option("--quarantine", default=None,
              help="Where bad input rows go, replacing a previous run's [default: "
                   "<stem>_quarantine/ beside a Milvus Lite file <stem>.db, "
                   "./egecmp_index_quarantine for a server].")
@_milvus_options
@_config_options
def index(cfg: Config, model_dir: str, data: str, workers: Optional[int], quarantine: Optional[str],
          milvus_uri: Optional[str], token: Optional[str], collection: Optional[str]) -> None:
    """Embed items with a Ray Data actor pool and upsert them into a Milvus collection.

    Upserts by item id: re-indexing the same items replaces them, new items are added
    without a rebuild. Milvus Lite (the default) is owned by one Ray actor; any number of
    encoder replicas feed it. Index type and parameters: index.index_type, index.nlist, ...
    """
    from egecmp_ray.retrieval.indexing import run_index
    from egecmp_ray.runtime import init_ray

    _set(cfg, "index", milvus_uri=milvus_uri, token=token, embed_workers=workers)
    init_ray()
    s = run_index(model_dir, data, cfg, collection=collection, quarantine=quarantine)
    click.echo(f"index: {s['rows']:,} items upserted ({s['quarantined']:,} quarantined) at "
               f"{s['rows_per_s']:,} rows/s; collection {s['collection']} now holds "
               f"{s['total']:,} ({s['index_type']}) in {s['milvus_uri']}; quarantine -> "
               f"{s['quarantine']}")


@cli.command()
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False),
              help="A model directory or URI written by pretrain (needed for --method "
                   "model/hybrid).")
@click.option("--queries", required=True,
              help="Query items: a synth dir (its query split), Parquet rows or a Product1M .txt.")
@click.option("--gallery", required=True,
              help="Gallery items: a synth dir (its gallery split), Parquet rows or a Product1M .txt "
                   "(the same file as --queries for the dev-as-both protocol).")
@click.option("--out", required=True, callback=_out_dir,
              help="Output dir or URI: metric_results.json, retrieval_id_list.txt.")
@click.option("--method", type=click.Choice(["model", "hybrid", "tfidf"]), default="model",
              show_default=True,
              help="model: the dense embeddings in Milvus; hybrid: dense + BM25 over title "
                   "n-grams in Milvus, fused by index.hybrid_ranker (rrf/weighted in Milvus' "
                   "hybrid_search, zscore/minmax in the client; each side alone is reported "
                   "too); tfidf: the character n-gram TF-IDF baseline.")
@_milvus_options
@_config_options
def evaluate(cfg: Config, model_dir: Optional[str], queries: str, gallery: str, out: str,
             method: str, milvus_uri: Optional[str], token: Optional[str],
             collection: Optional[str]) -> None:
    """Product1M evaluation: rank the gallery for every query (itself removed), write
    OUT/retrieval_id_list.txt (query_id,g1,...,g100) and OUT/metric_results.json (mAP, Prec,
    mAR @10/50/100; mAP/Prec @1/5/10 for single-label queries).

    The gallery goes into a fresh collection (or the named --collection) of a Milvus Lite
    file in OUT unless --milvus-uri is given (a Lite file is local: with an object-store OUT
    it goes to a temporary directory, named in the log).
    """
    from egecmp_ray.data import storage
    from egecmp_ray.retrieval.evaluate import run_evaluate
    from egecmp_ray.runtime import init_ray

    if not milvus_uri:
        local = Path(out) if storage.is_local(out) else Path(tempfile.mkdtemp(prefix="egecmp-eval-"))
        milvus_uri = str(local / "milvus.db")
        log.info("evaluate: the gallery goes into Milvus Lite at %s", milvus_uri)
    _set(cfg, "index", milvus_uri=milvus_uri, token=token)
    init_ray()
    s = run_evaluate(queries, gallery, out, cfg, method=method, model_dir=model_dir,
                     collection=collection)
    m = s["metrics"]
    ident = m.get("identical", {})
    extra = f", identical mAP@1 {ident['mAP@1']:.4f}" if ident else ""
    for side, cm in m.get("components", {}).items():
        extra += f", {side} alone {cm['top10']['mAP']:.4f}"
    if m["counts"]["queries_without_positives"]:
        extra += f", {m['counts']['queries_without_positives']:,} queries without a positive"
    click.echo(f"evaluate ({method}): {m['counts']['queries']:,} queries x "
               f"{m['counts']['gallery']:,} gallery: mAP@10 {m['top10']['mAP']:.4f}, "
               f"mAR@10 {m['top10']['mAR']:.4f}, Prec@10 {m['top10']['Prec']:.4f}, "
               f"mAP@100 {m['top100']['mAP']:.4f}{extra} in {s['elapsed_s']:.1f} s -> {out}")


@cli.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="A model directory or URI written by pretrain (OUT/model).")
@click.option("--host", default=None, help="Bind address [config serve.host: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="HTTP port [config serve.port: 8000].")
@click.option("--write-config", "write_config", default=None, type=click.Path(dir_okay=False),
              help="Write the Serve config YAML (for `serve run` / `serve deploy` / a RayService "
                   "serveConfigV2) with these arguments and exit.")
@click.option("--detach", is_flag=True,
              help="Deploy and return, leaving the app on the cluster (with RAY_ADDRESS, e.g. "
                   "under `ray job submit`); default: block until Ctrl-C, then shut it down.")
@_milvus_options
@_config_options
def serve(cfg: Config, model_dir: str, host: Optional[str], port: Optional[int],
          write_config: Optional[str], detach: bool, milvus_uri: Optional[str],
          token: Optional[str], collection: Optional[str]) -> None:
    """Serve retrieval over HTTP with Ray Serve: /search, /compare, /recommend, /items,
    /healthz, /readyz; the OpenAPI schema at /docs.

    Encoder replicas autoscale (serve.min_replicas..max_replicas) and batch requests
    (serve.max_batch_size); the searcher holds the Milvus connection and batches searches. A
    Milvus Lite file (the default index.milvus_uri) is owned by one searcher replica; a server
    URI (http://host:19530) lets searchers scale out. Binds 127.0.0.1 unless --host says otherwise.
    """
    import signal
    import threading

    import yaml

    from egecmp_ray.data import storage
    from egecmp_ray.retrieval.milvus_store import is_lite
    from egecmp_ray.serve.app import serve_config, start_service, stop_service

    _set(cfg, "index", milvus_uri=milvus_uri, token=token)
    _set(cfg, "serve", host=host, port=port)
    if write_config:
        ctx = click.get_current_context()
        preset = ctx.params.get("preset")
        overrides = [*([f"preset={preset}"] if preset else []),
                     *ctx.params.get("set_overrides", ()), *ctx.params.get("overrides", ())]
        if milvus_uri and is_lite(milvus_uri):
            milvus_uri = str(Path(milvus_uri).resolve())  # `serve run` may start elsewhere
        for key, value in (("index.milvus_uri", milvus_uri), ("index.token", token),
                           ("serve.host", host), ("serve.port", port)):
            if value is not None:
                overrides.append(f"{key}={value}")
        config_path = ctx.params.get("config_path")
        doc = serve_config(cfg, storage.absolute(model_dir), collection,
                           str(Path(config_path).resolve()) if config_path else None, overrides)
        Path(write_config).write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True),
                                      encoding="utf-8")
        click.echo(f"serve: wrote {write_config} (serve run {write_config} | serve deploy "
                   f"{write_config})")
        return
    from egecmp_ray.runtime import init_ray

    init_ray(metrics=True)  # a long-lived service: its Prometheus metrics may be scraped
    try:
        url = start_service(cfg, model_dir, collection)  # stops what it started if it fails
    except KeyboardInterrupt:
        click.echo("serve: interrupted while starting, shut down cleanly")
        return
    click.echo(f"serving {url} (OpenAPI at {url}/docs), index {cfg.index.milvus_uri}")
    if detach:
        click.echo(f"serve: deployed on the cluster, detached -> {url}")
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or a supervisor: shut down cleanly
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    stop_service()
    click.echo(f"serve: shut down cleanly -> {url}")


@cli.command("model-info")
@_config_options
def model_info(cfg: Config) -> None:
    """Parameter count of each stream of the model a config builds (no Ray, nothing trained).

    The vocabulary size is model.vocab_size (preprocess's tokenizer must not exceed it).
    """
    import torch

    from egecmp_ray.model.egecmp import EGECMP, TokenIds, parameter_counts

    with torch.device("meta"):  # shapes only: the paper preset needs no memory or init time
        model = EGECMP(cfg.model, TokenIds(cfg.model.vocab_size))
    counts = parameter_counts(model)
    total = counts.pop("total")
    width = max(len(k) for k in counts)
    for stream, n in counts.items():
        click.echo(f"{stream:<{width}}  parameters: {n}")
    click.echo(f"model-info: preset {cfg.preset}, variant {cfg.model.variant}, "
               f"losses {','.join(cfg.model.active_losses())}; parameters: {total}")


BENCHMARKS = ("synth", "preprocess", "model", "train", "index", "serve", "cluster")
SCRIPTS = {"cluster": "run_all.py"}  # the others: bench_<name>.py


@cli.command()
@click.argument("name", type=click.Choice([*BENCHMARKS, "all"]))
@click.option("--out", default="results", show_default=True, help="Directory for JSON + markdown.")
@click.option("--quick", is_flag=True, help="Small sizes: check the benchmark runs, not figures.")
@_config_options
def bench(cfg: Config, name: str, out: str, quick: bool) -> None:
    """Run a benchmark from benchmarks/ and write results/bench_NAME.json + a markdown table.

    `cluster` (benchmarks/run_all.py; its --help for worker and replica counts): preprocess
    and pretrain at 1, 2 workers through `ray job submit`, serving at 1, 2 encoder replicas
    under 1/8/32 clients, on a simulated multi-node cluster, the autoscaling trace, PNG
    plots -> results/bench-<date>.{json,md,*.png}. `all` runs every one, `cluster` last.
    The config (with --config/--preset/overrides) is handed to the benchmark as a YAML file.
    """
    import runpy

    import yaml

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg.to_dict(), f, allow_unicode=True)
    for bench_name in BENCHMARKS if name == "all" else (name,):
        script = root / SCRIPTS.get(bench_name, f"bench_{bench_name}.py")
        if not script.is_file():
            raise click.UsageError(f"{script} not found: benchmarks run from a source checkout")
        sys.argv = [str(script), "--out", out, "--config", f.name] + (["--quick"] if quick else [])
        runpy.run_path(str(script), run_name="__main__")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def report(args: Sequence[str]) -> None:
    """The retrieval results table (benchmarks/results_table.py; its --help lists ARGS):
    TF-IDF and the no_entity / no_graph / full models, trained on the same data and budget,
    on the synthetic benchmark and the real dev titles -> results/retrieval_table.md + .json."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "results_table.py"
    if not script.is_file():
        raise click.UsageError(f"{script} not found: the report runs from a source checkout")
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


def main(argv: Optional[Sequence[str]] = None, prog_name: Optional[str] = None) -> None:
    """The process entry (``egecmp``, ``jobs/*.py``): no temporary file outlives the run."""
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()
    cli.main(args=list(argv) if argv is not None else None, prog_name=prog_name or "egecmp")


def run_job(command: str) -> None:
    """Entry of ``jobs/<command>.py``: the same command, its flags from ``sys.argv``."""
    main([command, *sys.argv[1:]], prog_name=f"jobs/{command}.py")
