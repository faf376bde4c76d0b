"""The preprocess stage: raw samples -> training-ready shards, vocabulary and entity graph.

Two streaming passes with Ray Data, and aggregations in between:

1. read -> validate (bad rows and repeated ids to ``quarantine/``; each image decoded once,
   for the check and for its region features) -> clean + entities -> ``_work/rows`` (no
   image bytes)
2. from ``_work/rows``, in one read and one ``groupby`` (distributed, over per-batch partial
   counts): items per entity, items per entity pair, words; then on the driver the entity
   vocabulary, the PMI edges and the WordPiece tokenizer, from what passes the min counts
3. ``_work/rows`` -> encode (tokens, entity ids: what needs the vocabulary) -> ``shards/``;
   the input is not read again. Meanwhile a Ray task builds the kNN alias and context edges,
   the graph and its GAE sets (they need the vocabulary, not the shards).

Everything is written to a staging directory inside ``--out`` and swapped in only once the
counts reconcile, so a failed run leaves the previous output as it was; a re-run with the same
input and config gives the same files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from egecmp_ray.config import Config, EntityConfig, InputError
from egecmp_ray.data import storage
from egecmp_ray.data.duplicates import first_origins
from egecmp_ray.data.ingest import reconcile, validated_rows
from egecmp_ray.data.schema import SCHEMA_VERSION
from egecmp_ray.data.sources import Source, check_out_apart, check_read_args, source_counts
from egecmp_ray.data.validate import VALIDATE_BATCH_ROWS, Featurise, reason_counts
from egecmp_ray.entities import graph
from egecmp_ray.entities.encode import (encode_work_batch, parquet_options, region_dim, work_batch,
                                        write_vocab)
from egecmp_ray.entities.extract import load_extractor
from egecmp_ray.entities.regions import (DECODE_SIDE, GRID_BATCH, NUM_REGIONS, grid_feature_bytes,
                                         grid_pixels)
from egecmp_ray.entities.tokenizer import (build_wordpiece, check_tokenizer, load_tokenizer,
                                           save_tokenizer, word_counts)
from egecmp_ray.placement import cpu_task
from egecmp_ray.runtime import unreserved_operators

log = logging.getLogger(__name__)

OUTPUTS = ("shards", "vocab", "graph", "quarantine", "_work")  # owned in --out (and manifest.json)
# Rows per ``_work/rows`` file and per shard (~10 MB): the later passes' unit of work, one
# file each (unset, Ray Data packs a pass's output into a few large files).
FILE_ROWS = 2048
SUM = "sum(count)"  # the column a groupby sum of the per-batch partial counts makes
WORD_MIN_COUNT = 2  # words seen once do not get a token (they split into characters)
# Pass 1's grid regions: features from validation's own decode, GRID_BATCH images a call.
GRID_FEATURISE = Featurise(grid_pixels, grid_feature_bytes, DECODE_SIDE, GRID_BATCH)


@contextlib.contextmanager
def _stage(name: str, timings: dict[str, float]):
    log.info("preprocess: %s ...", name)
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 3)
    log.info("preprocess: %s done in %.1f s", name, timings[name])


def _arrays(ds, columns: tuple[str, ...]) -> list[np.ndarray]:
    """Columns of a (small, aggregated) dataset, streamed to the driver in batches."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for b in ds.iter_batches(batch_format="numpy", batch_size=65536):
        for c in columns:
            parts[c].append(b[c])
    return [np.concatenate(parts[c]) if parts[c] else np.zeros(0, np.int64) for c in columns]


ENTITY, PAIR, WORD = 0, 1, 2  # the ``kind`` of a vocab_counts row
SEEN = 3  # a ``frequent_counts`` row whose count is the distinct entities of its batch


def vocab_counts(batch: dict[str, Any], words: bool = True) -> dict[str, np.ndarray]:
    """Ray Data fn: this batch's partial counts of everything the vocabulary needs, as one
    table (``kind``, ``key``, ``count``): items per entity, items per entity pair
    (:func:`graph.pair_counts`), and (``words``) the words of titles and entities. One table,
    so one read and one shuffle serve all three."""
    parts = [(ENTITY, graph.entity_counts(batch), "entity"), (PAIR, graph.pair_counts(batch), "pair")]
    if words:
        parts.append((WORD, word_counts(batch, columns=("title", "entities")), "word"))
    return {"kind": np.concatenate([np.full(len(c["count"]), kind, np.int8) for kind, c, _ in parts]),
            "key": np.concatenate([c[key] for _, c, key in parts]),
            "count": np.concatenate([c["count"] for _, c, _ in parts])}


def frequent_counts(batch: pa.Table, min_counts: dict[int, int]) -> pa.Table:
    """Ray Data fn, on the summed counts: the rows at or above their kind's min count (what
    the vocabulary needs), plus one ``SEEN`` row counting this batch's distinct entities, so
    one streamed read gives the driver both (a count and a filtered read were two jobs)."""
    kind, total = batch["kind"], batch[SUM]
    keep = functools.reduce(pc.or_, [pc.and_(pc.equal(kind, k), pc.greater_equal(total, m))
                                     for k, m in min_counts.items()])
    seen = pa.table({"kind": pa.array([SEEN], kind.type), "key": pa.array([""], batch["key"].type),
                     SUM: pa.array([pc.sum(pc.equal(kind, ENTITY)).as_py() or 0], total.type)})
    return pa.concat_tables([batch.select(["kind", "key", SUM]).filter(keep), seen])


def read_files_batch(batch: dict[str, Any], columns: Optional[list[str]] = None):
    """Ray Data fn: Parquet file URIs in, their rows out."""
    import pyarrow.parquet as pq

    for uri in batch["path"]:
        fs, path = storage.resolve(str(uri))
        yield pq.read_table(path, filesystem=fs, columns=columns)


def _read_work(work_dir: str, columns: Optional[list[str]] = None):
    """``_work/rows`` with one read task per file. Ray's Parquet reader packs files into
    blocks of up to 128 MiB and a pass fused with its read runs one task per block: 3 blocks
    for 50k rows (26,000 / 5,500 / 18,500), so pass 2 ran at most 3 ways, unevenly."""
    import ray

    fs, path = storage.resolve(work_dir)
    prefix = work_dir.split("://", 1)[0] + "://" if "://" in work_dir else ""
    files = [prefix + f for f in storage.list_files(fs, path)]
    return ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files)
                               ).map_batches(read_files_batch, batch_size=1, batch_format="pyarrow",
                                             fn_kwargs={"columns": columns}, **cpu_task())


def encoded_rows(work_dir: str, ecfg: EntityConfig, vocab_dir: str):
    """Pass 2's dataset: ``_work/rows`` encoded (token ids, entity ids), one task per file.
    Each file's rows go in as one batch: a batch size made Ray Data fuse the file reader with
    the encoder and bundle that many *paths* into one task (all of pass 2 ran as one task, on
    one CPU whatever the cluster)."""
    return _read_work(work_dir).map_batches(
        encode_work_batch, batch_format="numpy",
        fn_kwargs={"cfg": ecfg, "vocab_dir": vocab_dir}, **cpu_task())


def _rows(uri: str) -> int:
    fs, path = storage.resolve(uri)
    return sum(storage.parquet_rows(fs, f) for f in storage.list_files(fs, path))


def build_vocab(work_dir: str, vocab_dir: str, cfg: Config, n_items: int,
                tokenizer_path: Optional[str], timings: dict[str, float]
                ) -> tuple[dict[str, Any], list[str], dict[str, np.ndarray]]:
    """Aggregations between the passes (distributed ``groupby`` counts; only what passes the
    min counts reaches the driver); writes ``vocab_dir`` (a path or URI). Returns (manifest
    counts, entity names in node order, co-occurrence edges) for ``entity_graph``."""
    with storage.local_output(vocab_dir) as local:
        return _build_vocab(work_dir, local, cfg, n_items, tokenizer_path, timings)


def _build_vocab(work_dir: str, vocab_dir: Path, cfg: Config, n_items: int,
                 tokenizer_path: Optional[str], timings: dict[str, float]
                 ) -> tuple[dict[str, Any], list[str], dict[str, np.ndarray]]:
    import ray

    text = _read_work(work_dir, columns=["title", "entities"])
    # Shuffle partitions scale with the cluster (Ray's default of 200 is slow on small runs).
    partitions = max(2, 4 * int(ray.cluster_resources().get("CPU", 1)))
    with _stage("counts: entities, pairs, words", timings):
        min_counts = {ENTITY: cfg.entities.min_count, PAIR: graph.MIN_PAIR_COUNT,
                      WORD: WORD_MIN_COUNT}
        # Only what passes its min count reaches the driver (most distinct keys are rare).
        kind, key, total = _arrays(
            text.map_batches(vocab_counts, batch_format="numpy",
                             fn_kwargs={"words": not tokenizer_path}, **cpu_task())
            .groupby(["kind", "key"], num_partitions=partitions).sum("count")
            .map_batches(frequent_counts, batch_format="pyarrow",
                         fn_kwargs={"min_counts": min_counts}, **cpu_task()),
            ("kind", "key", SUM))
        entities_seen = int(total[kind == SEEN].sum())
        of = {k: (key[kind == k].tolist(), total[kind == k]) for k in (ENTITY, PAIR, WORD)}
        vocab = graph.make_vocab(list(zip(of[ENTITY][0], of[ENTITY][1].tolist())),
                                 cfg.entities.min_count)
    write_vocab(vocab_dir / "entities.tsv", vocab)
    index = {e: i for i, (e, _) in enumerate(vocab)}
    node_count = np.array([c for _, c in vocab], dtype=np.float64)
    src, dst, cnt = graph.pair_ids(*of[PAIR], index)
    cooc = graph.pmi_edges(src, dst, cnt, node_count, n_items, cfg.entities.pmi_min)

    with _stage("tokenizer", timings):
        if tokenizer_path:
            tok = load_tokenizer(tokenizer_path)
            if tok.get_vocab_size() > cfg.model.vocab_size:
                log.warning("tokenizer %s has %d tokens > model.vocab_size %d: the model must "
                            "be built with vocab_size >= %d", tokenizer_path, tok.get_vocab_size(),
                            cfg.model.vocab_size, tok.get_vocab_size())
        else:
            tok = build_wordpiece(zip(of[WORD][0], of[WORD][1].tolist()), cfg.model.vocab_size,
                                  WORD_MIN_COUNT)
        save_tokenizer(tok, vocab_dir)

    stats = {"entities": len(vocab), "entities_seen": entities_seen,
             "edges_pmi": int(len(cooc["src"])), "tokenizer_vocab": tok.get_vocab_size()}
    return stats, [e for e, _ in vocab], cooc


def entity_graph(graph_dir: str, names: list[str], cooc: dict[str, np.ndarray],
                 ecfg: EntityConfig, seed: int) -> dict[str, Any]:
    """kNN alias edges, context edges, the graph and its GAE sets, written to ``graph_dir``.
    Needs only the vocabulary and the co-occurrence edges, so preprocess runs it as a Ray
    task while pass 2 encodes (nothing waits on the driver). Returns counts and its seconds."""
    with storage.local_output(graph_dir) as out:
        return _entity_graph(out, names, cooc, ecfg, seed)


def _entity_graph(out: Path, names: list[str], cooc: dict[str, np.ndarray],
                  ecfg: EntityConfig, seed: int) -> dict[str, Any]:
    # torch and the GAE are imported here, not with the module: every worker that runs one of
    # this module's Ray Data fns (the counts, pass 2's file reader) imports it, and torch +
    # torch_geometric cost ~1.7 s of CPU per worker process, on the passes' critical path.
    import torch

    from egecmp_ray.entities import gae

    t0 = time.perf_counter()
    x = graph.char_ngram_vectors(names)
    knn = graph.knn_edges(x, ecfg.knn_k, ecfg.knn_min_sim)
    context = graph.context_edges(cooc, len(names), ecfg.context_k, ecfg.context_min_sim)
    graph.write_edges(out / "edges_cooc.parquet", cooc, "pmi")
    graph.write_edges(out / "edges_knn.parquet", knn, "knn")
    graph.write_edges(out / "edges_context.parquet", context, "context")
    ei, w = graph.edge_index([cooc, knn, context], len(names))
    candidates, _ = graph.edge_index([context], len(names))
    xt = torch.from_numpy(x)
    graph.save_graph(out, xt, ei, w, len(names), candidates)
    with_pos = 0
    if len(names) >= 2:
        sets, grown = gae.learn_graph(xt, ei, ecfg, seed=seed, candidates=candidates)
        torch.save({"positives": sets.positives, "negatives": sets.negatives,
                    "embeddings": sets.embeddings, "edge_index": grown}, out / "sets.pt")
        with_pos = int((sets.positives >= 0).any(1).sum())
    return {"edges_knn": int(len(knn["src"])), "edges_context": int(len(context["src"])),
            "nodes_with_positives": with_pos, "seconds": round(time.perf_counter() - t0, 3)}


def _start_entity_graph(graph_dir: str, names: list[str], cooc: dict[str, np.ndarray],
                        cfg: Config):
    """``entity_graph`` as a one-CPU Ray task, preferably on this node (it writes into the
    staging dir, which pass 1's workers already write to, so any node sees it; soft: a head
    started with no CPUs must not leave the task unschedulable). Threads follow the task's
    CPU (Ray sets OMP_NUM_THREADS=1)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    task = ray.remote(num_cpus=1, scheduling_strategy=here, max_retries=1, **cpu_task())(entity_graph)
    return task.remote(graph_dir, names, cooc, cfg.entities, cfg.data.seed)


def run_preprocess(source: Source, out: str, cfg: Config, images_dir: Optional[str] = None,
                   split: Optional[str] = None, tokenizer_path: Optional[str] = None) -> dict[str, Any]:
    """The whole stage; returns (and writes) ``manifest.json``."""
    # Every argument is checked before anything is written or any pass runs.
    check_read_args(source, images_dir, split)
    root = storage.absolute(out)  # a local path or an object-store URI (s3://, gs://)
    storage.check_out_dir(out)
    check_out_apart(out, source, images_dir)
    if cfg.entities.region_features:
        region_dim(cfg.entities)  # fails now, naming the directory, if it holds no region files
    try:
        load_extractor(cfg.entities.extractor)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(f"entities.extractor {cfg.entities.extractor!r}: {exc}") from None
    if tokenizer_path:
        check_tokenizer(load_tokenizer(tokenizer_path), tokenizer_path)
    with storage.staged(root) as stage, unreserved_operators():
        manifest = _preprocess_into(stage, source, cfg, images_dir, split, tokenizer_path)
        storage.publish(stage, root, OUTPUTS)
    return manifest


def _preprocess_into(stage: str, source: Source, cfg: Config, images_dir: Optional[str],
                     split: Optional[str], tokenizer_path: Optional[str]) -> dict[str, Any]:
    """The passes and aggregations, all written under ``stage``; returns the manifest."""
    import ray

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rows_in, rows_repaired = source_counts(source)
    if rows_in == 0:
        raise InputError(f"no rows in {source.uri}: nothing to preprocess")
    log.info("preprocess %s: %d rows -> %s", source.describe(), rows_in, stage)
    q_dir, work_dir = storage.child(stage, "quarantine"), storage.child(stage, "_work", "rows")
    vocab_dir, shards = storage.child(stage, "vocab"), storage.child(stage, "shards")
    with _stage("repeated ids", timings):
        first = first_origins(source, cfg.data, images_dir=images_dir, split=split)

    # Grid regions come from validation's own decode; detector features from their files.
    featurise = None if cfg.entities.region_features else GRID_FEATURISE
    with _stage("pass 1: validate + entities + regions", timings):
        (validated_rows(source, cfg.data, q_dir, images_dir=images_dir, split=split,
                        first_origin=first, featurise=featurise)
         .map_batches(work_batch, batch_format="numpy", batch_size=VALIDATE_BATCH_ROWS,
                      fn_kwargs={"cfg": cfg.entities}, **cpu_task())  # fused with the read: no batch size
         .write_parquet(work_dir, max_rows_per_file=FILE_ROWS, ray_remote_args=cpu_task(),
                        **parquet_options()))
    n_items = _rows(work_dir)
    reasons = reason_counts(*storage.resolve(q_dir))
    if n_items == 0:
        raise InputError(f"no valid rows in {source.uri}: all {rows_in} were quarantined "
                         f"({', '.join(f'{k}: {v}' for k, v in reasons.items())})")
    stats, names, cooc = build_vocab(work_dir, vocab_dir, cfg, n_items, tokenizer_path, timings)

    graph_task = _start_entity_graph(storage.child(stage, "graph"), names, cooc, cfg)  # beside pass 2
    try:
        with _stage("pass 2: encode", timings):
            encoded_rows(work_dir, cfg.entities, vocab_dir).write_parquet(
                shards, max_rows_per_file=FILE_ROWS, ray_remote_args=cpu_task(),
                **parquet_options())
    except BaseException:
        ray.cancel(graph_task, force=True)  # it must not write into a staging dir being removed
        raise
    with _stage("entity graph: wait after pass 2", timings):
        graph_stats = ray.get(graph_task)
    timings["entity graph (task, beside pass 2)"] = graph_stats.pop("seconds")
    stats.update(graph_stats)
    storage.remove(*storage.resolve(storage.child(stage, "_work")))

    rows_out = _rows(shards)
    rows_quarantined = sum(reasons.values())
    if rows_out != n_items:
        raise RuntimeError(f"pass 2 wrote {rows_out} rows from the {n_items} of pass 1: rows were lost")
    reconcile(rows_in, rows_out, rows_quarantined)
    elapsed = time.perf_counter() - t0
    manifest = {
        "kind": "preprocess",
        "schema_version": SCHEMA_VERSION,
        "input": source.uri,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_quarantined": rows_quarantined,
        "quarantine_reasons": reasons,
        "rows_repaired": rows_repaired,
        **stats,
        "max_tokens": cfg.entities.max_tokens,
        "max_entities": cfg.entities.max_entities,
        "entity_tokens": cfg.entities.entity_tokens,
        "num_regions": NUM_REGIONS,
        "region_dim": region_dim(cfg.entities),
        "region_source": cfg.entities.region_features or "grid",
        "config": {"data": dataclasses.asdict(cfg.data), "entities": dataclasses.asdict(cfg.entities)},
        "inputs": {"images": images_dir, "split": split, "tokenizer": tokenizer_path},
        "config_hash": cfg.hash("data", "entities", "model"),
        "timings_s": timings,
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(rows_in / elapsed, 1) if elapsed > 0 else None,
    }
    storage.write_json(*storage.resolve(storage.child(stage, storage.MANIFEST)), manifest)
    return manifest
