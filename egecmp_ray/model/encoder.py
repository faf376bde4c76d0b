"""Inference: raw (title, optional image bytes) -> retrieval vectors. Indexing and serving use
this; it runs the same per-row featurisation as preprocessing and the model's ``encode``."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from egecmp_ray.config import EntityConfig
from egecmp_ray.entities.encode import item_features
from egecmp_ray.model.egecmp import EGECMP


class ItemEncoder:
    """Holds a model plus the vocabulary directory its inputs were built with."""

    def __init__(self, model: EGECMP, entities: EntityConfig, vocab_dir: str, batch_size: int = 64):
        self.model, self.entities, self.vocab_dir = model.eval(), entities, vocab_dir
        self.batch_size = batch_size

    def encode(self, titles: Sequence[str], images: Optional[Sequence[Optional[bytes]]] = None,
               item_ids: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """``text``, ``image`` [n, E] and ``item`` [n, 2E] float32 vectors, in input order.
        An item without image bytes gets a zero image vector (its score is text-only)."""
        n = len(titles)
        images = list(images) if images is not None else [None] * n
        item_ids = list(item_ids) if item_ids is not None else [str(i) for i in range(n)]
        if len(images) != n or len(item_ids) != n:
            raise ValueError(f"{n} titles but {len(images)} images and {len(item_ids)} ids")
        parts: dict[str, list[np.ndarray]] = {"text": [], "image": [], "item": []}
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            feats = item_features(list(titles[start:stop]), images[start:stop],
                                  item_ids[start:stop], self.entities, self.vocab_dir)
            with torch.inference_mode():
                vecs = self.model.encode(feats)
            for key in parts:
                parts[key].append(vecs[key].float().cpu().numpy())
        dim = self.model.cfg.embed_dim
        return {key: np.concatenate(v) if v else np.zeros((0, dim * (2 if key == "item" else 1)),
                                                          np.float32)
                for key, v in parts.items()}

    def query_vectors(self, texts: Sequence[Optional[str]],
                      images: Optional[Sequence[Optional[bytes]]] = None) -> np.ndarray:
        """Item-space [n, 2E] vectors for queries where either modality may be missing: the
        missing half is zero, so a text-only query scores text against text only (and an
        image-only one image against image), instead of an empty title's vector adding noise."""
        vecs = self.encode([t or "" for t in texts], images)
        item = vecs["item"].copy()
        item[np.array([t is None for t in texts], dtype=bool), self.model.cfg.embed_dim:] = 0.0
        return item

