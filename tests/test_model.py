"""The hybrid-stream model and its objectives on tiny random batches (no Ray needed)."""

import numpy as np
import pytest
import torch

from egecmp_ray.config import ConfigError, load_config
from egecmp_ray.model.egecmp import EGECMP, TokenIds, parameter_counts
from egecmp_ray.model.masking import IGNORE, mask_regions, mask_tokens
from egecmp_ray.model.pretraining import mask_sequence, pretrain_losses
from egecmp_ray.model.samples import random_batch, random_graph

B, N_NODES = 6, 40
ALL_LOSSES = {"mlm", "mem", "mrm", "itc_text", "itc_entity", "graph_node", "graph_subgraph",
              "tec"}


def _model(*overrides, preset="tiny", seed=0):
    cfg = load_config(preset=preset, overrides=["model.dropout=0.0", *overrides])
    torch.manual_seed(seed)
    return EGECMP(cfg.model, TokenIds(cfg.model.vocab_size))


def _batch(model, n=B, seed=0, images=True):
    return random_batch(model, n, seed, images, nodes=N_NODES)


def _graph(model, seed=0):
    return random_graph(model, N_NODES, seed)


@pytest.mark.parametrize("preset", ["tiny", "small", "paper"])
def test_shapes_for_each_preset(preset):
    model = _model(preset=preset)
    cfg = model.cfg
    batch = _batch(model, n=2)
    out = model(*(batch[k] for k in ("title_ids", "entity_seq_ids")),
                batch["region_feats"].float(), batch["region_boxes"], batch["image_mask"])
    assert out.text_seq.shape == (2, 36, cfg.hidden)
    assert out.image_seq.shape == (2, 1 + cfg.num_regions, cfg.hidden)
    assert out.entity_seq.shape == (2, 36, cfg.hidden)
    assert out.image_single.shape == (2, cfg.image_hidden)
    vecs = model.encode(batch)
    assert vecs["item"].shape == (2, 2 * cfg.embed_dim)
    assert torch.allclose(vecs["text"].norm(dim=-1), torch.ones(2), atol=1e-5)
    counts = parameter_counts(model)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    if preset == "paper":
        assert (cfg.hidden, cfg.text_layers, cfg.image_layers, cfg.cross_layers) == (768, 4, 4, 6)
        assert 1e8 < counts["total"] < 3e8


def test_every_loss_is_finite_and_decreases_on_one_batch():
    model = _model()
    batch, graph = _batch(model), _graph(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(25):
        losses = pretrain_losses(model, batch, graph, torch.Generator().manual_seed(0))
        history.append({k: v.item() for k, v in losses.items()})
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert set(history[0]) == ALL_LOSSES | {"loss"}
    for name in history[0]:
        assert all(np.isfinite(h[name]) for h in history), name
        assert history[-1][name] < history[0][name], (name, history[0][name], history[-1][name])


# Which parameters each loss must reach (a prefix of parameter names).
REACHES = {
    "mlm": ["text.embeddings.word_embeddings", "coattn.0", "cross.", "token_head", "regions."],
    "mem": ["text.encoder", "coattn.0", "cross.", "token_head"],
    "mrm": ["regions.feature", "image.", "cross.", "region_head"],
    "itc_text": ["text.encoder", "image.", "itc_text", "itc_image"],
    "itc_entity": ["text.embeddings.word_embeddings", "image.", "itc_text", "itc_image"],
    "graph_node": ["text.embeddings.word_embeddings", "text.encoder"],
    "graph_subgraph": ["text.embeddings.word_embeddings", "text.encoder"],
    "tec": ["text.embeddings.word_embeddings", "text.encoder", "itc_text"],
}


@pytest.mark.parametrize("loss", sorted(REACHES))
def test_each_loss_reaches_its_parameters(loss):
    model = _model()
    losses = pretrain_losses(model, _batch(model), _graph(model), torch.Generator().manual_seed(1))
    model.zero_grad()
    losses[loss].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for prefix in REACHES[loss]:
        hit = [n for n, g in grads.items() if n.startswith(prefix) and g is not None
               and g.abs().sum() > 0]
        assert hit, f"{loss} sends no gradient to {prefix}*"
    if loss.startswith("graph"):  # graph losses use the text stream only
        assert all(g is None or g.abs().sum() == 0 for n, g in grads.items()
                   if n.startswith(("image.", "cross.", "coattn")))


def test_mask_tokens_recipe():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (400, 50), generator=g)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :2] = False  # e.g. [CLS] and padding
    masked, labels = mask_tokens(ids, maskable, mask_id=4, vocab_size=1000, prob=0.15, generator=g)
    chosen = labels != IGNORE
    assert not chosen[:, :2].any()
    assert abs(chosen[:, 2:].float().mean().item() - 0.15) < 0.01
    assert (labels[chosen] == ids[chosen]).all()
    assert (masked[~chosen] == ids[~chosen]).all()
    as_mask = (masked[chosen] == 4).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03  # the rest: random tokens


def test_random_replacements_are_never_special_tokens():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 8, (2000, 36), generator=g)  # a tiny vocabulary: specials drawn often
    masked, labels = mask_tokens(ids, torch.ones_like(ids, dtype=torch.bool), 4, 8, 0.5, g,
                                 special_ids=(0, 1, 2, 3, 4))
    replaced = (labels != IGNORE) & (masked != 4)
    assert replaced.any() and (masked[replaced] >= 5).all()


def test_mask_regions_zeroes_and_skips_items_without_images():
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(300, 36, 8, generator=g) + 0.1
    has = torch.arange(300) % 3 != 0
    masked, chosen = mask_regions(feats, has, 0.15, g)
    assert not chosen[~has].any()
    assert abs(chosen[has].float().mean().item() - 0.15) < 0.02
    zeroed = (masked == 0).all(-1)
    assert (zeroed <= chosen).all()  # only chosen regions are zeroed ...
    assert abs(zeroed[chosen].float().mean().item() - 0.9) < 0.05  # ... 90% of them


def test_the_model_sees_the_masked_inputs():
    """The research code's MLM/MRM saw the original tokens; here the embedding layer and the
    region projection receive exactly what masking produced."""
    model = _model()
    batch = _batch(model)
    seen = []
    h1 = model.text.embeddings.word_embeddings.register_forward_hook(
        lambda mod, args, out: seen.append(("tokens", args[0].clone())))
    h2 = model.regions.feature.register_forward_hook(
        lambda mod, args, out: seen.append(("regions", args[0].clone())))
    pretrain_losses(model, batch, None, torch.Generator().manual_seed(3))
    h1.remove()
    h2.remove()

    g = torch.Generator().manual_seed(3)  # replay the masking in pretrain_losses' order
    ids = batch["title_ids"]
    masked, labels = mask_sequence(model, ids, g)
    ent_masked, _ = mask_sequence(model, batch["entity_seq_ids"], g)
    feats, regions_chosen = mask_regions(batch["region_feats"].float(), batch["image_mask"], 0.15, g)

    tokens = [x for kind, x in seen if kind == "tokens"]
    assert torch.equal(tokens[0], masked) and torch.equal(tokens[1], ent_masked)
    chosen = labels != IGNORE
    assert (tokens[0][chosen] != ids[chosen]).float().mean() > 0.7  # originals are hidden
    region_inputs = [x for kind, x in seen if kind == "regions"][1]  # [0] is the mean token
    zeroed = (feats == 0).all(-1) & regions_chosen
    assert zeroed.any() and (region_inputs[zeroed] == 0).all()


def test_items_without_images_give_finite_vectors():
    model = _model()
    batch = _batch(model, images=False)
    vecs = model.encode(batch)
    assert torch.isfinite(vecs["item"]).all()
    assert (vecs["image"] == 0).all()  # no image: a text-only score, not a fake picture
    assert torch.allclose(vecs["text"].norm(dim=-1), torch.ones(B), atol=1e-5)
    losses = pretrain_losses(model, batch, _graph(model), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["itc_text"].item() == 0.0 and losses["mrm"].item() == 0.0


def test_encode_is_deterministic_and_leaves_training_mode():
    model = _model("model.dropout=0.3")
    model.train()
    batch = _batch(model)
    a, b = model.encode(batch)["item"], model.encode(batch)["item"]
    assert torch.equal(a, b) and model.training


@pytest.mark.parametrize("variant,expected", [
    ("full", ALL_LOSSES),
    ("no_graph", ALL_LOSSES - {"graph_node", "graph_subgraph"}),
    ("no_entity", {"mlm", "mrm", "itc_text"}),
])
def test_ablation_switches(variant, expected):
    model = _model(f"model.variant={variant}")
    losses = pretrain_losses(model, _batch(model), _graph(model), torch.Generator().manual_seed(0))
    assert set(losses) - {"loss"} == expected
    out = model(*(_batch(model)[k] for k in ("title_ids", "entity_seq_ids")),
                _batch(model)["region_feats"].float(), _batch(model)["region_boxes"],
                _batch(model)["image_mask"])
    assert (out.entity_seq is None) == (variant == "no_entity")


def test_single_losses_switch_off_and_graph_waits_for_a_graph():
    model = _model("model.losses=[mlm, graph_node]", "model.loss_weights.mlm=0.5")
    losses = pretrain_losses(model, _batch(model), None, torch.Generator().manual_seed(0))
    assert set(losses) == {"mlm", "loss"}  # no graph yet: graph losses do not run
    assert torch.isclose(losses["loss"], 0.5 * losses["mlm"])
    assert not hasattr(model, "region_head")
    assert hasattr(model, "itc_text")  # the single-stream readout reads its projection
    fused = _model("model.losses=[mlm]", "model.retrieval_features=fused")
    assert not hasattr(fused, "itc_text")  # nothing needs a contrastive head


def test_bad_loss_names_fail_naming_the_key():
    with pytest.raises(ConfigError, match="model.losses"):
        load_config(preset="tiny", overrides=["model.losses=[mlm, nope]"])
    with pytest.raises(ConfigError, match="model.loss_weights"):
        load_config(preset="tiny", overrides=["model.loss_weights.nope=1.0"])


def test_local_bert_checkpoint_loads_and_mismatches_are_named(tmp_path):
    from transformers import BertModel

    from egecmp_ray.config import InputError
    from egecmp_ray.model.egecmp import _bert_config

    cfg = load_config(preset="tiny", overrides=["model.text_layers=1"]).model
    tokens = TokenIds(cfg.vocab_size)
    bert_cfg = _bert_config(cfg, tokens)
    bert_cfg.num_hidden_layers = 3
    torch.manual_seed(5)
    saved = BertModel(bert_cfg, add_pooling_layer=False)
    saved.save_pretrained(tmp_path / "bert")
    cfg_ckpt = load_config(preset="tiny", overrides=[
        "model.text_layers=1", f"model.bert_checkpoint={tmp_path / 'bert'}"]).model
    model = EGECMP(cfg_ckpt, tokens)
    assert len(model.text.encoder.layer) == 1  # the first text_layers of the checkpoint
    assert model.text.config._attn_implementation == "sdpa"  # the text stream's boolean mask
    assert torch.equal(model.text.embeddings.word_embeddings.weight,
                       saved.embeddings.word_embeddings.weight)
    assert model.bert_parameter_names() and all(n.startswith("text.")
                                                for n in model.bert_parameter_names())
    with pytest.raises(InputError, match="vocab"):
        EGECMP(cfg_ckpt, TokenIds(cfg.vocab_size + 1))
    with pytest.raises(InputError, match="config.json"):
        EGECMP(load_config(preset="tiny", overrides=[
            f"model.bert_checkpoint={tmp_path}"]).model, tokens)


def test_bf16_weights_train_and_encode():
    """DeepSpeed bf16 keeps bf16 weights: inputs follow the weights' dtype, losses stay fp32."""
    model = _model().to(torch.bfloat16)
    batch = _batch(model)
    losses = pretrain_losses(model, batch, _graph(model), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    losses["loss"].backward()
    assert model.text.embeddings.word_embeddings.weight.grad.dtype == torch.bfloat16
    assert torch.isfinite(model.encode(batch)["item"]).all()


def test_every_parameter_gets_a_gradient_from_the_total_loss():
    """No dead weights: with images and a graph, each trainable parameter is reached by some
    loss; the retrieval heads are fixed orthogonal projections (no loss may train them)."""
    model = _model()
    losses = pretrain_losses(model, _batch(model), _graph(model), torch.Generator().manual_seed(0))
    losses["loss"].backward()
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["image_head.bias", "image_head.weight", "text_head.bias", "text_head.weight"]
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not dead, dead


def test_losses_pass_gradcheck():
    from egecmp_ray.model.losses import graph_node_loss, info_nce, subgraph_scores

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 6, dtype=torch.double, generator=g, requires_grad=True)
    b = torch.randn(4, 6, dtype=torch.double, generator=g, requires_grad=True)
    negs = torch.randn(4, 3, 6, dtype=torch.double, generator=g, requires_grad=True)
    valid = torch.tensor([[True, True, False]] * 4)
    members = torch.tensor([[0, 1, 2, -1], [1, 3, -1, -1]])
    # float32 inside the losses is the point in training; here compare in float64
    torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 0.5).double(), (a, b), eps=1e-3,
                             atol=1e-2)
    torch.autograd.gradcheck(lambda x, y, z: graph_node_loss(x, y, z, valid, 0.5).double(),
                             (a, b, negs), eps=1e-3, atol=1e-2)
    torch.autograd.gradcheck(lambda x: subgraph_scores(x, members).double(), (a,), eps=1e-3,
                             atol=1e-2)


def test_mean_pooling_ignores_padding_and_an_absent_image():
    from egecmp_ray.model.egecmp import _masked_mean

    seq = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [9.0, 9.0], [7.0, 7.0]]])
    pad = torch.tensor([[False, False, True], [True, True, True]])
    assert torch.equal(_masked_mean(seq, pad), torch.tensor([[2.0, 3.0], [0.0, 0.0]]))
    model = _model("model.pooling=mean")
    batch = _batch(model)
    batch["image_mask"][0] = False
    vecs = model.encode(batch)
    assert torch.isfinite(vecs["item"]).all() and (vecs["image"][0] == 0).all()
    assert torch.allclose(vecs["text"].norm(dim=-1), torch.ones(B))


def test_title_entity_contrast_trains_the_single_stream_readout():
    """``tec`` needs no image; the item vector (``retrieval_features=single``, the default)
    reads the very projection it trains."""
    assert "tec" in load_config(preset="tiny").model.active_losses()
    model = _model("model.losses=[mlm,tec]")
    assert model.cfg.retrieval_features == "single"
    batch = _batch(model, images=False)
    before = model.encode(batch)["text"].clone()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(15):
        losses = pretrain_losses(model, batch, None, torch.Generator().manual_seed(0))
        history.append(losses["tec"].item())
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert history[-1] < history[0]
    after = model.encode(batch)
    assert not torch.allclose(after["text"], before)
    assert torch.allclose(after["text"].norm(dim=-1), torch.ones(B), atol=1e-5)
    assert torch.all(after["image"] == 0)  # no image: a zero image half
    assert "tec" not in _model("model.variant=no_entity", "model.losses=[mlm,tec]").cfg.active_losses()


def test_entity_spans_find_each_entity_in_both_sequences():
    from egecmp_ray.model.masking import entity_spans

    cls, sep, pad = 1, 2, 0
    ent = torch.tensor([[cls, 7, 8, sep, 9, sep, pad, pad]])  # entities [7 8] and [9]
    title = torch.tensor([[cls, 5, 7, 8, 6, 9, 7, sep]])  # [7 8] at 2-3, [9] at 5; a lone 7
    in_seq, in_title = entity_spans(ent, title, (ent == cls) | (ent == sep) | (ent == pad), 4)
    assert in_seq[0, 0].nonzero().flatten().tolist() == [1, 2]
    assert in_seq[0, 1].nonzero().flatten().tolist() == [4]
    assert in_title[0, 0].nonzero().flatten().tolist() == [2, 3]  # not the lone 7 at 6
    assert in_title[0, 1].nonzero().flatten().tolist() == [5]
    assert not in_seq[0, 2:].any() and not in_title[0, 2:].any()


def test_entity_span_masking_masks_an_entity_in_both_places():
    model = _model("model.entity_span_masking=true", "model.mask_prob=0.5")
    batch = _batch(model)
    from egecmp_ray.model.pretraining import joint_entity_masks

    title = torch.as_tensor(batch["title_ids"]).long()
    ent = torch.as_tensor(batch["entity_seq_ids"]).long()
    in_title, in_ent = joint_entity_masks(model, title, ent, torch.Generator().manual_seed(0))
    assert in_ent.any()
    for b in range(title.shape[0]):  # every masked entity token also appears masked in the title
        masked_tokens = set(ent[b][in_ent[b]].tolist())
        title_tokens = set(title[b][in_title[b]].tolist())
        assert title_tokens <= masked_tokens
    losses = pretrain_losses(model, batch, None, torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["loss"])


def test_graph_part_of_the_item_vector_reads_the_entities_alone():
    """retrieval_weights.graph adds the mean of the item's entities, each encoded alone (what
    the graph losses train), to the text half; an item without entities gets none of it."""
    model = _model()
    batch = _batch(model)
    mask = torch.as_tensor(batch["entity_mask"]).bool().clone()
    mask[0] = False  # item 0 has no entity
    batch = {**batch, "entity_mask": mask}
    model.cfg.retrieval_weights = {"text": 1.0, "entity": 1.0, "graph": 0.0, "image": 1.0}
    plain = model.encode(batch)["text"]
    model.cfg.retrieval_weights["graph"] = 2.0
    with_graph = model.encode(batch)["text"]
    assert torch.allclose(with_graph[0], plain[0], atol=1e-6)
    assert not torch.allclose(with_graph[1:], plain[1:], atol=1e-3)
    ents = model.entity_vectors(torch.as_tensor(batch["entity_token_ids"]).long(), mask)
    assert ents[0].abs().sum() == 0 and torch.allclose(ents[1:].norm(dim=-1), torch.ones(B - 1))
    # item 1's vector depends on its entities only through the mask's chosen ones
    alone = model.entity_reps(torch.as_tensor(batch["entity_token_ids"])[1][mask[1]].long())
    want = torch.nn.functional.normalize(model.itc_text(alone.mean(0)), dim=-1)
    assert torch.allclose(ents[1], want, atol=1e-5)
    for variant in ("no_entity",):  # no entity stream: the weight changes nothing
        m = _model(f"model.variant={variant}")
        b = _batch(m)
        m.cfg.retrieval_weights = {"graph": 0.0}
        a = m.encode(b)["text"]
        m.cfg.retrieval_weights = {"graph": 3.0}
        assert torch.equal(a, m.encode(b)["text"])


def test_capture_options_tie_decoders_add_cross_embeddings_and_init_like_bert(tmp_path):
    """model.tie_decoders shares the word embeddings with the token decoder (and survives a
    model dir round trip); model.cross_embeddings tells the cross transformer which part and
    position a token is, so the fused outputs change; model.init=bert gives every module
    outside BERT N(0, 0.02) weights; and every new parameter is reached by a loss."""
    from egecmp_ray.model.model_dir import load_model_dir, save_model_dir

    plain = _model()
    model = _model("model.tie_decoders=true", "model.cross_embeddings=true", "model.init=bert")
    assert model.token_head[-1].weight is model.text.embeddings.word_embeddings.weight
    assert abs(float(model.coattn[0].a_to_b.q.weight.detach().std()) - 0.02) < 0.004
    assert abs(float(model.cross.layers[0].self_attn.in_proj_weight.detach().std()) - 0.02) < 0.004
    eye = model.text_head.weight @ model.text_head.weight.T  # the fixed head stays orthogonal
    assert torch.allclose(eye, torch.eye(eye.shape[0]), atol=1e-4)
    batch = _batch(model)
    losses = pretrain_losses(model, batch, _graph(model), torch.Generator().manual_seed(0))
    losses["loss"].backward()
    for name in ("cross_position.weight", "cross_segment.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    # the same weights without the cross embeddings give other fused outputs
    no_cross = _model("model.tie_decoders=true", "model.init=bert")
    no_cross.load_state_dict({k: v for k, v in model.state_dict().items()
                              if not k.startswith("cross_")})
    model.eval(), no_cross.eval()
    inputs = (torch.as_tensor(batch[k]) for k in ("title_ids", "entity_seq_ids", "region_feats",
                                                  "region_boxes", "image_mask"))
    title, ent, feats, boxes, has_image = inputs
    with torch.no_grad():
        a = model(title, ent, feats.float(), boxes.float(), has_image.bool())
        b = no_cross(title, ent, feats.float(), boxes.float(), has_image.bool())
    assert torch.allclose(a.text_single, b.text_single) and not torch.allclose(a.text_seq, b.text_seq)
    cfg = load_config(preset="tiny", overrides=["model.tie_decoders=true",
                                                "model.cross_embeddings=true"])
    save_model_dir(tmp_path / "m", model.state_dict(), cfg, model.tokens, tmp_path, None)
    loaded, _ = load_model_dir(str(tmp_path / "m"))
    assert loaded.token_head[-1].weight is loaded.text.embeddings.word_embeddings.weight
    assert torch.allclose(loaded.encode(batch)["item"], model.encode(batch)["item"], atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in plain.parameters())


def test_model_inputs_take_read_only_shard_arrays_without_a_warning():
    """Ray Data hands batches out as read-only numpy views; torch warns (once a process) on a
    tensor made from one, so the model copies them first."""
    import warnings

    from egecmp_ray.model.egecmp import model_inputs

    batch = {"title_ids": np.ones((2, 4), np.int64), "entity_seq_ids": np.ones((2, 4), np.int64),
             "region_feats": np.zeros((2, 3, 5), np.float16),
             "region_boxes": np.zeros((2, 3, 5), np.float32), "image_mask": np.ones(2, bool)}
    for a in batch.values():
        a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        title, _, feats, _, has_image = model_inputs(batch, torch.device("cpu"))
    assert title.dtype == torch.long and feats.dtype == torch.float32 and has_image.all()


@pytest.mark.parametrize("pre_ln", [False, True])
def test_encoder_stack_is_torch_transformer_encoder(pre_ln):
    """The batch-first stack draws the same initial weights as nn.TransformerEncoder under the
    same seed, has its parameter names (older checkpoints load) and computes the same thing,
    padding included, in eval and in training (dropout 0)."""
    from torch import nn

    from egecmp_ray.model.blocks import transformer_stack

    torch.manual_seed(7)
    layer = nn.TransformerEncoderLayer(32, 4, 64, 0.0, activation="gelu", batch_first=True,
                                       norm_first=pre_ln)
    ref = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(32) if pre_ln else None,
                                enable_nested_tensor=False)
    torch.manual_seed(7)
    ours = transformer_stack(32, 4, 64, 3, 0.0, pre_ln)
    theirs = ref.state_dict()
    assert list(ours.state_dict()) == list(theirs)
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())
    with torch.no_grad():  # different weights per layer, so a layer mix-up would show
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 9, 32)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[1, 5:] = True
    pad[2, 1:] = True
    for train in (False, True):
        ref.train(train)
        ours.train(train)
        with torch.no_grad():
            want = ref(x, src_key_padding_mask=pad)
            got = ours(x, src_key_padding_mask=pad)
        keep = ~pad  # the eval fast path leaves padded positions as zeros
        assert torch.allclose(got[keep], want[keep], atol=1e-5), (train, pre_ln)
