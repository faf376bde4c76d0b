"""Batch embedding with Ray Data: validated sample rows -> item vectors, on an actor pool of
encoder replicas (each loads the model directory once; a GPU each when the cluster has them).

The featurisation is the model directory's own (its tokenizer, entity vocabulary and extractor
settings), so a query or gallery file never needs a separate preprocess run.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from egecmp_ray.config import Config
from egecmp_ray.data import storage
from egecmp_ray.data.ingest import validated_rows
from egecmp_ray.data.sources import Source
from egecmp_ray.placement import cpu_task


class EmbedBatch:
    """A Ray Data callable class: one model per actor, reused for every batch."""

    def __init__(self, model_dir: str, batch_size: int, threads: Optional[int] = None):
        import torch

        from egecmp_ray.model.encoder import ItemEncoder
        from egecmp_ray.model.model_dir import VOCAB_DIR, load_model_dir

        if threads:
            torch.set_num_threads(threads)
        model, cfg = load_model_dir(model_dir)
        if torch.cuda.is_available():
            model = model.cuda()
        self.encoder = ItemEncoder(model, cfg.entities, str(storage.local_input(model_dir) / VOCAB_DIR), batch_size)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        ids = [str(i) for i in batch["item_id"]]
        vecs = self.encoder.encode(list(batch["title"]), list(batch["image"]), ids)
        labels = [list(x) if x is not None else [] for x in batch["labels"]]
        return {"id": np.array(ids, dtype=object), "vector": vecs["item"],
                "label": np.array([x[0] if x else "" for x in labels], dtype=object),
                "labels": np.array(["\t".join(x) for x in labels], dtype=object),
                "title": batch["title"], "price": batch["price"], "category": batch["category"]}


def embed_rows(source: Source, model_dir: str, cfg: Config, quarantine_dir: Optional[str],
               workers: Optional[int] = None, use_gpu: bool = False):
    """Lazy dataset of ``id, vector, label (first), labels (tab-joined), title, price,
    category`` for every valid row of ``source``; bad rows go to ``quarantine_dir``."""
    n = workers or cfg.index.embed_workers
    # Blocks of one batch each, so every replica gets work even from a single input file.
    rows = validated_rows(source, cfg.data, quarantine_dir).repartition(
        target_num_rows_per_block=cfg.index.embed_batch)
    return rows.map_batches(
        EmbedBatch, batch_format="numpy", batch_size=cfg.index.embed_batch,
        fn_constructor_kwargs={"model_dir": model_dir, "batch_size": cfg.index.embed_batch,
                               "threads": None if use_gpu else 1},
        concurrency=n, num_cpus=1, num_gpus=1 if use_gpu else 0, **cpu_task())
