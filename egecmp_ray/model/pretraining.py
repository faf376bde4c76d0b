"""The pretraining objectives (DESIGN.md section 4) over one batch: one masked forward, then
each active loss. Every loss keeps its gradient path into the network (the research code
detached its graph losses); a loss with nothing to score this step is an attached zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from egecmp_ray.model.egecmp import EGECMP, column_tensor, model_inputs
from egecmp_ray.model.losses import (graph_node_loss, graph_subgraph_loss, info_nce,
                                     mean_or_zero)
from egecmp_ray.model.masking import IGNORE, entity_spans, mask_regions, mask_tokens, rand, randint

SUBGRAPH_NODES = (3, 5)  # positives (and negatives) sampled per subgraph, inclusive


@dataclass
class GraphContext:
    """The entity graph as the losses use it: node tokens and the graph-learning sets."""

    node_tokens: torch.Tensor  # [N, t] token ids of each entity node
    positives: torch.Tensor  # [N, P] node ids, -1 padded
    negatives: torch.Tensor  # [N, Q] node ids, -1 padded

    def to(self, device: torch.device) -> "GraphContext":
        return GraphContext(self.node_tokens.to(device), self.positives.to(device),
                            self.negatives.to(device))

    @classmethod
    def load(cls, data_dir: str) -> Optional["GraphContext"]:
        """From a preprocess output dir (``vocab/`` + ``graph/sets.pt``); None when the graph
        had too few nodes for sets. Node tokens use the shards' per-entity length."""
        from egecmp_ray.entities.encode import read_vocab
        from egecmp_ray.entities.tokenizer import encode_padded, load_tokenizer

        root = Path(data_dir)
        sets_file = root / "graph" / "sets.pt"
        if not sets_file.is_file():
            return None
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        names = [e for e, _ in read_vocab(root / "vocab" / "entities.tsv")]
        tok = load_tokenizer(str(root / "vocab" / "tokenizer.json"))
        sets = torch.load(sets_file, weights_only=True)
        tokens = torch.from_numpy(encode_padded(tok, names, manifest["entity_tokens"])).long()
        return cls(tokens, sets["positives"].long(), sets["negatives"].long())


# Every head runs every step, on an empty selection too, and every worker calls info_nce
# (it holds collectives): under ZeRO-3 and DDP all workers must run the same modules.

def _token_loss(model: EGECMP, seq: torch.Tensor, picked: "_Picked") -> torch.Tensor:
    logits = model.token_head(seq.flatten(0, 1)[picked.rows]).float()
    return mean_or_zero(F.cross_entropy(logits, picked.targets, reduction="sum"),
                        len(picked.rows))


@dataclass
class _Picked:
    """Flat positions to score ([B, L] row-major, as boolean indexing orders them) and their
    targets, found before the forward: indexing the outputs with them needs no host sync."""

    rows: torch.Tensor  # [n] long
    targets: Optional[torch.Tensor] = None  # [n] token ids (MLM/MEM)

    @classmethod
    def where(cls, mask: torch.Tensor, values: Optional[torch.Tensor] = None) -> "_Picked":
        rows = mask.flatten().nonzero().squeeze(1)
        return cls(rows, None if values is None else values.flatten()[rows])


def maskable(model: EGECMP, ids: torch.Tensor) -> torch.Tensor:
    """Positions MLM may pick: real tokens, not [PAD]/[CLS]/[SEP]."""
    t = model.tokens
    return (ids != t.pad) & (ids != t.cls) & (ids != t.sep)


def mask_sequence(model: EGECMP, ids: torch.Tensor, gen: Optional[torch.Generator],
                  force: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM masking of a title or entity sequence with this model's special tokens (``force``:
    positions masked whatever the draw)."""
    t = model.tokens
    return mask_tokens(ids, maskable(model, ids), t.mask, t.vocab_size, model.cfg.mask_prob, gen,
                       special_ids=(t.pad, t.cls, t.sep, t.mask, t.unk), force=force)


def joint_entity_masks(model: EGECMP, title: torch.Tensor, ent_seq: torch.Tensor,
                       gen: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions to mask together (``model.entity_span_masking``): each entity is picked with
    ``mask_prob``, and its span goes in the entity sequence *and* wherever its tokens occur in
    the title, so the model cannot copy a masked brand from its unmasked twin across
    co-attention. Returns (title positions, entity-sequence positions)."""
    t = model.tokens
    delimiters = (ent_seq == t.cls) | (ent_seq == t.sep) | (ent_seq == t.pad)
    in_seq, in_title = entity_spans(ent_seq, title, delimiters, model.cfg.max_entities_masked)
    present = in_seq.any(-1)
    picked = (rand(present.shape, gen, title.device) < model.cfg.mask_prob) & present
    return ((in_title & picked[..., None]).any(1), (in_seq & picked[..., None]).any(1))


def _sample_columns(ids: torch.Tensor, k: int, gen: Optional[torch.Generator]) -> torch.Tensor:
    """Per row, up to ``k`` of its valid (>= 0) ids in random order, -1 padded: [A, k]."""
    keys = rand(ids.shape, gen, ids.device).masked_fill(ids < 0, 2.0)
    order = keys.argsort(dim=1)[:, :k]
    return ids.gather(1, order)


@dataclass
class GraphPlan:
    """What the graph losses encode and compare this step, drawn before the forward: rows
    index ``nodes`` (the distinct entity nodes to encode), -1 = absent."""

    nodes: torch.Tensor  # [N] node ids to run through the text stream
    anchors: torch.Tensor  # [A] rows of the anchor entities (empty: no anchor this step)
    positive: torch.Tensor  # [A] rows of one graph-positive each
    negatives: torch.Tensor  # [A, Q] rows of the graph-negatives
    pos_members: torch.Tensor  # [A, 1+k] anchor + positive subgraph rows
    neg_members: torch.Tensor  # [A, 1+k] anchor + negative subgraph rows


def plan_graph(model: EGECMP, entity_ids: torch.Tensor, graph: GraphContext,
               gen: Optional[torch.Generator]) -> GraphPlan:
    """Up to ``graph_anchors`` distinct batch entities that have both a graph-positive and a
    graph-negative, with their sampled neighbourhoods."""
    ids = torch.unique(entity_ids[entity_ids >= 0])
    ids = ids[(graph.positives[ids] >= 0).any(1) & (graph.negatives[ids] >= 0).any(1)]
    if len(ids) == 0:  # the text stream still runs (ZeRO-3), on one node, times 0
        none = ids.new_zeros((0,))
        return GraphPlan(ids.new_zeros((1,)), none, none, none[:, None], none[:, None],
                         none[:, None])
    ids = ids[rand((len(ids),), gen, ids.device).argsort()[:model.cfg.graph_anchors]]
    pos, neg = graph.positives[ids], graph.negatives[ids]
    k = SUBGRAPH_NODES[0] + int(randint(SUBGRAPH_NODES[1] - SUBGRAPH_NODES[0] + 1, (1,), gen,
                                        ids.device))
    pos_k, neg_k = _sample_columns(pos, k, gen), _sample_columns(neg, k, gen)
    # Encode each distinct node once; every loss indexes into these rows.
    everything = torch.cat([ids, pos_k.flatten(), neg.flatten(), neg_k.flatten()])
    nodes = torch.unique(everything[everything >= 0])

    def rows(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, torch.searchsorted(nodes, x.clamp(min=0)), -1)

    a = rows(ids)
    return GraphPlan(nodes, a, rows(pos_k[:, 0]), rows(neg),
                     torch.cat([a[:, None], rows(pos_k)], 1),
                     torch.cat([a[:, None], rows(neg_k)], 1))


def graph_losses(model: EGECMP, plan: GraphPlan, graph: GraphContext, active: set[str]
                 ) -> dict[str, torch.Tensor]:
    """Node- and subgraph-based injection over ``plan``'s anchors."""
    cfg = model.cfg
    reps = model.entity_reps(graph.node_tokens[plan.nodes])
    if len(plan.anchors) == 0:
        z = reps.float().sum() * 0.0
        return {name: z for name in ("graph_node", "graph_subgraph") if name in active}
    out: dict[str, torch.Tensor] = {}
    if "graph_node" in active:
        out["graph_node"] = graph_node_loss(reps[plan.anchors], reps[plan.positive],
                                            reps[plan.negatives.clamp(min=0)],
                                            plan.negatives >= 0, cfg.temperature)
    if "graph_subgraph" in active:
        out["graph_subgraph"] = graph_subgraph_loss(reps, plan.pos_members, plan.neg_members,
                                                    cfg.graph_margin)
    return out


def pretrain_losses(model: EGECMP, batch: dict[str, Any], graph: Optional[GraphContext] = None,
                    generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
    """Each active loss for ``batch`` and their weighted sum as ``loss``. Graph losses run
    only when ``graph`` is given (there is no graph before the first one is built).

    Everything that needs the host to read device values (which positions are masked, which
    items have an image, the graph sample) happens before the forward, so from the forward to
    the backward nothing waits on the device and the host queues the loss kernels while the
    forward still runs (on an H200 the loss phase's syncs left the GPU idle ~45 ms a step).
    The three phases carry profiler labels (``PHASES``) for ``bench_model --profile``."""
    cfg, device = model.cfg, model.device_of()
    active = set(cfg.active_losses())
    with record_function(PHASES[0]):
        inputs = model_inputs(batch, device, model.float_dtype())
        masked = _mask_inputs(model, inputs, active, generator)
        plan = None
        if graph is not None and active & {"graph_node", "graph_subgraph"}:
            if graph.positives.device != device:
                graph = graph.to(device)
            plan = plan_graph(model, column_tensor(batch["entity_ids"], device, torch.long),
                              graph, generator)
    with record_function(PHASES[1]):
        out = model(*masked.inputs)
    with record_function(PHASES[2]):
        losses = _objectives(model, out, masked, inputs[2], active)
        if plan is not None:
            losses.update(graph_losses(model, plan, graph, active))
        losses["loss"] = sum((cfg.loss_weights.get(k, 1.0) * v for k, v in losses.items()),
                             torch.zeros((), device=device))
    return losses


PHASES = ("pretrain.masking", "pretrain.forward", "pretrain.losses")


@dataclass
class _Masked:
    """The forward's inputs after masking, and what each loss picks from its outputs."""

    inputs: tuple[torch.Tensor, ...]  # (title, entity sequence, regions, boxes, has_image)
    title: Optional[_Picked]  # MLM: masked title positions and their tokens
    entities: Optional[_Picked]  # MEM: the same in the entity sequence
    regions: Optional[_Picked]  # MRM: regions to regress ([B, R] flat)
    images: Optional[_Picked]  # items with an image (the image-text contrastive pairs)


def _mask_inputs(model: EGECMP, inputs: tuple[torch.Tensor, ...], active: set[str],
                 generator: Optional[torch.Generator]) -> _Masked:
    cfg = model.cfg
    title, ent_seq, feats, boxes, has_image = inputs
    force_title = force_ent = None
    if cfg.entity_span_masking and model.use_entities:
        force_title, force_ent = joint_entity_masks(model, title, ent_seq, generator)
    title_in, title_picked = title, None
    if "mlm" in active:
        title_in, labels = mask_sequence(model, title, generator, force_title)
        title_picked = _Picked.where(labels != IGNORE, labels)
    ent_in, ent_picked = ent_seq, None
    if "mem" in active:
        ent_in, labels = mask_sequence(model, ent_seq, generator, force_ent)
        ent_picked = _Picked.where(labels != IGNORE, labels)
    feats_in, regions = feats, None
    if "mrm" in active:
        feats_in, chosen = mask_regions(feats, has_image, cfg.region_mask_prob, generator)
        regions = _Picked.where(chosen)
    images = _Picked.where(has_image) if active & {"itc_text", "itc_entity"} else None
    return _Masked((title_in, ent_in, feats_in, boxes, has_image), title_picked, ent_picked,
                   regions, images)


def _objectives(model: EGECMP, out: Any, masked: _Masked, feats: torch.Tensor,
                active: set[str]) -> dict[str, torch.Tensor]:
    """The non-graph losses; ``feats`` are the unmasked regions (MRM's targets)."""
    cfg = model.cfg
    losses: dict[str, torch.Tensor] = {}
    if "mlm" in active:
        losses["mlm"] = _token_loss(model, out.text_seq, masked.title)
    if "mem" in active:
        losses["mem"] = _token_loss(model, out.entity_seq, masked.entities)
    if "mrm" in active:
        rows = masked.regions.rows
        pred = model.region_head(out.image_seq[:, 1:].flatten(0, 1)[rows]).float()
        target = feats.flatten(0, 1)[rows].float()
        losses["mrm"] = mean_or_zero(F.mse_loss(pred, target, reduction="sum"),
                                     len(rows) * feats.shape[-1])
    # Contrastive pairs are items with an image (in-batch negatives, gathered across workers).
    if active & {"itc_text", "itc_entity"}:
        images = masked.images.rows
        image_single = model.itc_image(out.image_single[images])
    if "itc_text" in active:
        losses["itc_text"] = info_nce(image_single, model.itc_text(out.text_single[images]),
                                      cfg.temperature)
    if "itc_entity" in active:
        losses["itc_entity"] = info_nce(
            image_single, model.itc_text(out.entity_single[images]), cfg.temperature)
    if "tec" in active:  # every row: the two views need no image
        losses["tec"] = info_nce(model.itc_text(out.text_single),
                                 model.itc_text(out.entity_single), cfg.temperature)
    # No contrastive loss on the retrieval vectors: both come out of the cross passes, where
    # each already sees the other modality, so matching them teaches an item hash, not the
    # product (measured: mAP@10 fell from 0.032 untrained to 0.007 after 100 steps).
    return losses
