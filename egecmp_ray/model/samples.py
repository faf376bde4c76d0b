"""Random inputs shaped like preprocessed shards, for model tests and benchmarks (the shapes
and padding rules of real shards, without needing a preprocess run)."""

from __future__ import annotations

import torch

from egecmp_ray.model.egecmp import EGECMP
from egecmp_ray.model.pretraining import GraphContext

SEQ_LEN, MAX_ENTITIES, ENTITY_TOKENS = 36, 15, 8


def random_batch(model: EGECMP, n: int, seed: int = 0, images: bool = True,
                 nodes: int = 40) -> dict[str, torch.Tensor]:
    """``n`` items: [CLS] ... [SEP] [PAD]... token rows, region features in [0, 1) stored as
    float16, entity node ids in [-1, nodes) with each present entity's tokens and mask. With
    ``images``, item 1 still has none."""
    g = torch.Generator().manual_seed(seed)
    cfg, tokens = model.cfg, model.tokens

    def ids() -> torch.Tensor:
        x = torch.randint(5, tokens.vocab_size, (n, SEQ_LEN), generator=g)
        x[:, 0] = tokens.cls
        lengths = torch.randint(6, SEQ_LEN, (n,), generator=g)
        x[torch.arange(SEQ_LEN)[None] == lengths[:, None]] = tokens.sep
        x[torch.arange(SEQ_LEN)[None] > lengths[:, None]] = tokens.pad
        return x

    has = torch.full((n,), images, dtype=torch.bool)
    if images and n > 1:
        has[1] = False
    batch = {"title_ids": ids(), "entity_seq_ids": ids(),
             "region_feats": (torch.rand(n, cfg.num_regions, cfg.region_dim, generator=g)
                              * has[:, None, None]).half(),
             "region_boxes": torch.rand(n, cfg.num_regions, 5, generator=g),
             "image_mask": has,
             "entity_ids": torch.randint(-1, nodes, (n, MAX_ENTITIES), generator=g)}
    ent = torch.randint(5, tokens.vocab_size, (n, MAX_ENTITIES, ENTITY_TOKENS), generator=g)
    ent[..., 0], ent[..., -1] = tokens.cls, tokens.sep
    mask = batch["entity_ids"] >= 0
    batch["entity_token_ids"] = torch.where(mask[..., None], ent, tokens.pad)  # absent: [PAD]s
    batch["entity_mask"] = mask
    return batch


def random_graph(model: EGECMP, nodes: int = 40, seed: int = 0) -> GraphContext:
    """A graph context with 3 positives (2 padded slots) and 5 negatives a node."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(5, model.tokens.vocab_size, (nodes, ENTITY_TOKENS), generator=g)
    tok[:, 0], tok[:, -1] = model.tokens.cls, model.tokens.sep
    pos = torch.randint(0, nodes, (nodes, 5), generator=g)
    pos[:, 3:] = -1
    neg = torch.randint(0, nodes, (nodes, 5), generator=g)
    return GraphContext(tok, pos, neg)
