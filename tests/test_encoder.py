"""Inference encoding of raw items agrees with the preprocessed shards the model trains on."""

import pyarrow.parquet as pq
import torch

from egecmp_ray.entities.tokenizer import load_tokenizer
from egecmp_ray.model.egecmp import EGECMP, TokenIds
from egecmp_ray.model.encoder import ItemEncoder
from egecmp_ray.model.pretraining import GraphContext, pretrain_losses


def _model(prep, cfg):
    tok = load_tokenizer(str(prep / "vocab" / "tokenizer.json"))
    torch.manual_seed(0)
    return EGECMP(cfg.model, TokenIds.from_tokenizer(tok))


def test_raw_items_encode_like_their_shards(prepared):
    import ray

    tmp, cfg, _, _ = prepared
    prep = tmp / "prep"
    model = _model(prep, cfg)
    shard = ray.data.read_parquet(str(prep / "shards")).take_batch(12, batch_format="numpy")
    ids = [str(i) for i in shard["item_id"]]
    by_id = {r["item_id"]: r for f in sorted((tmp / "synth").glob("*/*.parquet"))
             for r in pq.read_table(f, columns=["item_id", "title", "image"]).to_pylist()}
    images = [by_id[i]["image"] for i in ids]
    images[0] = None  # the same item without its picture: a text-only vector

    enc = ItemEncoder(model, cfg.entities, str(prep / "vocab"), batch_size=5)
    got = enc.encode([by_id[i]["title"] for i in ids], images, ids)
    want = model.encode(shard)
    assert got["item"].shape == (12, 2 * cfg.model.embed_dim)
    assert torch.allclose(torch.from_numpy(got["text"][1:]), want["text"][1:], atol=1e-5)
    assert torch.allclose(torch.from_numpy(got["image"][1:]), want["image"][1:], atol=1e-5)
    assert (got["image"][0] == 0).all() and abs(float((got["text"][0] ** 2).sum()) - 1) < 1e-5
    assert enc.encode([])["item"].shape == (0, 2 * cfg.model.embed_dim)


def test_graph_context_from_preprocess_output_drives_graph_losses(prepared):
    import ray

    tmp, cfg, _, m = prepared
    prep = tmp / "prep"
    graph = GraphContext.load(str(prep))
    assert graph.node_tokens.shape == (m["entities"], cfg.entities.entity_tokens)
    assert graph.positives.shape[0] == m["entities"] and (graph.positives >= 0).any()
    model = _model(prep, cfg)
    batch = ray.data.read_parquet(str(prep / "shards")).take_batch(32, batch_format="numpy")
    losses = pretrain_losses(model, batch, graph, torch.Generator().manual_seed(0))
    assert {"graph_node", "graph_subgraph"} <= set(losses)
    assert losses["graph_node"].item() > 0 and torch.isfinite(losses["loss"])
