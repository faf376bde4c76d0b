"""The EGE-CMP hybrid-stream model (DESIGN.md section 3), architecture and ``encode`` only.

Data flow of one forward::

    title ids ──┐ text stream (BERT, shared) ── co-attention(text, entity) ──┐
    entity seq ─┘                                                            │
    regions+boxes ── image stream ── co-attention(image, text) ──────────────┤
                    cross transformer on [text; image] and [entity; text] ── heads

The pretraining objectives live in ``pretraining.py``; this module has no training-only work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from egecmp_ray.config import InputError, ModelConfig
from egecmp_ray.model.blocks import (BiAttentionLayer, RegionEmbeddings, SelfAttention,
                                     transformer_stack)

TITLE, ENTITY = 0, 1  # BERT token types: the shared text stream knows which sequence it reads
IMAGE = 2  # the third segment of the cross transformer's inputs (model.cross_embeddings)


@dataclass(frozen=True)
class TokenIds:
    """The tokenizer facts the model needs (a loaded vocab.txt has its own special ids)."""

    vocab_size: int
    pad: int = 0
    unk: int = 1
    cls: int = 2
    sep: int = 3
    mask: int = 4

    @classmethod
    def from_tokenizer(cls, tok: Any) -> "TokenIds":
        from egecmp_ray.entities.tokenizer import CLS, MASK, PAD, SEP, UNK

        return cls(tok.get_vocab_size(), tok.token_to_id(PAD), tok.token_to_id(UNK),
                   tok.token_to_id(CLS), tok.token_to_id(SEP), tok.token_to_id(MASK))


@dataclass
class StreamOutputs:
    """What one forward produces; pretraining reads the sequences, retrieval the vectors."""

    text_seq: torch.Tensor  # [B, T, H] title after the [text; image] cross pass
    image_seq: torch.Tensor  # [B, 1+R, H] global token + regions after the same pass
    entity_seq: Optional[torch.Tensor]  # [B, T, H] after the [entity; text] pass (None: no_entity)
    text_single: torch.Tensor  # [B, H] title after the text stream alone (mean or [CLS])
    entity_single: Optional[torch.Tensor]  # [B, H] entity sequence after the text stream
    image_single: torch.Tensor  # [B, Hi] image after its stream alone (mean or global token)
    text_vec: torch.Tensor  # [B, E] L2-normalised
    image_vec: torch.Tensor  # [B, E] L2-normalised; zeros for items without an image


def _masked_mean(seq: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Mean over the non-padding positions of [B, L, H] (an all-padding row gives zeros)."""
    keep = (~pad).unsqueeze(-1).to(seq.dtype)
    return (seq * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def _bert_init(module: nn.Module) -> None:
    """BERT's initialisation (``BertPreTrainedModel._init_weights``) for any module."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, SelfAttention):
        nn.init.normal_(module.in_proj_weight, std=0.02)
        nn.init.zeros_(module.in_proj_bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# The text stream hands BERT a ready boolean mask (True = attend), SDPA's convention;
# transformers' "eager" attention would add it to the scores instead, so SDPA is pinned.
BERT_ATTENTION = "sdpa"


def _bert_config(cfg: ModelConfig, tokens: TokenIds):
    from transformers import BertConfig

    return BertConfig(vocab_size=tokens.vocab_size, hidden_size=cfg.hidden,
                      num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                      intermediate_size=cfg.text_ffn, hidden_dropout_prob=cfg.dropout,
                      attention_probs_dropout_prob=cfg.dropout, max_position_embeddings=512,
                      type_vocab_size=2, pad_token_id=tokens.pad,
                      attn_implementation=BERT_ATTENTION)


def _load_bert(path: str, cfg: ModelConfig, tokens: TokenIds) -> nn.Module:
    """A local BERT checkpoint's embeddings and first ``text_layers`` layers (offline only)."""
    from transformers import BertModel

    if not (Path(path) / "config.json").is_file():
        raise InputError(f"model.bert_checkpoint {path!r}: no config.json there (a local "
                         "directory saved by transformers is needed; nothing is downloaded)")
    bert = BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False,
                                     attn_implementation=BERT_ATTENTION)
    got = bert.config
    if got.hidden_size != cfg.hidden or got.vocab_size != tokens.vocab_size:
        raise InputError(f"model.bert_checkpoint {path!r} has hidden {got.hidden_size} and vocab "
                         f"{got.vocab_size}; the config/tokenizer need hidden {cfg.hidden} and "
                         f"vocab {tokens.vocab_size} (pass its vocab.txt to preprocess --tokenizer)")
    if got.type_vocab_size < 2:
        raise InputError(f"model.bert_checkpoint {path!r} has type_vocab_size "
                         f"{got.type_vocab_size}; titles and entity sequences need 2")
    if got.num_hidden_layers < cfg.text_layers:
        raise InputError(f"model.bert_checkpoint {path!r} has {got.num_hidden_layers} layers "
                         f"< model.text_layers {cfg.text_layers}")
    bert.encoder.layer = bert.encoder.layer[:cfg.text_layers]
    bert.config.num_hidden_layers = cfg.text_layers
    return bert


class EGECMP(nn.Module):
    def __init__(self, cfg: ModelConfig, tokens: TokenIds):
        super().__init__()
        from transformers import BertModel

        self.cfg, self.tokens = cfg, tokens
        self.use_entities = cfg.variant != "no_entity"
        active = set(cfg.active_losses())
        self.text = (_load_bert(cfg.bert_checkpoint, cfg, tokens) if cfg.bert_checkpoint
                     else BertModel(_bert_config(cfg, tokens), add_pooling_layer=False))
        self.regions = RegionEmbeddings(cfg.region_dim, cfg.image_hidden, cfg.dropout)
        self.image = transformer_stack(cfg.image_hidden, cfg.image_heads, cfg.image_ffn,
                                       cfg.image_layers, cfg.dropout, pre_ln=False)
        # Co-attention and cross layers are shared across pairs, so the image joins at text width.
        self.image_to_text = (nn.Linear(cfg.image_hidden, cfg.hidden)
                              if cfg.image_hidden != cfg.hidden else nn.Identity())
        self.coattn = nn.ModuleList(
            BiAttentionLayer(cfg.hidden, cfg.coattn_hidden, cfg.coattn_heads, cfg.text_ffn,
                             cfg.dropout) for _ in range(cfg.coattn_layers))
        self.cross = transformer_stack(cfg.hidden, cfg.cross_heads, cfg.text_ffn,
                                       cfg.cross_layers, cfg.dropout, pre_ln=True)
        self.text_head = nn.Linear(cfg.hidden * (2 if self.use_entities else 1), cfg.embed_dim)
        self.image_head = nn.Linear(cfg.hidden, cfg.embed_dim)
        for head in (self.text_head, self.image_head):  # fixed projections, trained by no loss
            nn.init.orthogonal_(head.weight)  # (see pretraining.py): random projections that
            # roughly keep angles (Johnson-Lindenstrauss)
            nn.init.zeros_(head.bias)
            head.requires_grad_(False)
        # Pretraining heads exist only for the losses this variant runs.
        if cfg.cross_embeddings:  # what the cross transformer cannot tell from content alone
            self.cross_position = nn.Embedding(512, cfg.hidden)
            self.cross_segment = nn.Embedding(3, cfg.hidden)  # TITLE, ENTITY, IMAGE
        if active & {"mlm", "mem"}:
            self.token_head = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
                                            nn.LayerNorm(cfg.hidden),
                                            nn.Linear(cfg.hidden, tokens.vocab_size))
        if "mrm" in active:
            self.region_head = nn.Linear(cfg.hidden, cfg.region_dim)
        if active & {"itc_text", "itc_entity", "tec"} or cfg.retrieval_features == "single":
            self.itc_text = nn.Linear(cfg.hidden, cfg.embed_dim)
            self.itc_image = nn.Linear(cfg.image_hidden, cfg.embed_dim)
        if cfg.init == "bert":
            for name, module in self.named_children():
                if name not in ("text", "text_head", "image_head"):  # BERT inits itself; the
                    module.apply(_bert_init)  # fixed heads stay orthogonal
            nn.init.normal_(self.regions.no_image, std=0.02)
        if cfg.tie_decoders and hasattr(self, "token_head"):  # CAPTURE ties them as BERT does
            self.token_head[-1].weight = self.text.embeddings.word_embeddings.weight

    # -- streams -------------------------------------------------------------------------
    def text_stream(self, ids: torch.Tensor, token_type: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared BERT over title or entity tokens: (hidden [n, L, H], padding mask [n, L])."""
        pad = ids == self.tokens.pad
        # A ready [n, 1, 1, L] mask (True = attend), which transformers passes through as
        # is: from a 2D one it would first ask the device whether any token is padding.
        out = self.text(input_ids=ids, attention_mask=~pad[:, None, None, :],
                        token_type_ids=torch.full_like(ids, token_type)).last_hidden_state
        return out, pad

    def entity_reps(self, entity_token_ids: torch.Tensor) -> torch.Tensor:
        """Single entities [n, t] through the text stream, pooled as the single streams are
        (``single_pooling``: the mean over the tokens, as the entity sequence retrieval reads
        is pooled, or [CLS]): the entity's representation for graph losses and the node
        features of graph learning."""
        seq, pad = self.text_stream(entity_token_ids, ENTITY)
        return _masked_mean(seq, pad) if self.cfg.single_pooling == "mean" else seq[:, 0]

    def forward(self, title_ids: torch.Tensor, entity_seq_ids: torch.Tensor,
                region_feats: torch.Tensor, region_boxes: torch.Tensor, has_image: torch.Tensor
                ) -> StreamOutputs:
        text, t_pad = self.text_stream(title_ids, TITLE)
        img_tok, i_pad = self.regions(region_feats, region_boxes, has_image)
        img = self.image(img_tok, src_key_padding_mask=i_pad)
        single = (lambda seq, pad: _masked_mean(seq, pad)) if self.cfg.single_pooling == "mean" \
            else (lambda seq, pad: seq[:, 0])
        text_single, image_single = single(text, t_pad), single(img, i_pad)
        ent = ent_pad = entity_single = None
        if self.use_entities:
            ent, ent_pad = self.text_stream(entity_seq_ids, ENTITY)
            entity_single = single(ent, ent_pad)
            for layer in self.coattn:
                text, ent = layer(text, t_pad, ent, ent_pad)
        img = self.image_to_text(img)
        for layer in self.coattn:  # the same modules, now on (image, text)
            img, text = layer(img, i_pad, text, t_pad)

        n_text = text.shape[1]
        x1 = self.cross(self._cross_input(text, img, IMAGE),
                        src_key_padding_mask=torch.cat([t_pad, i_pad], 1))
        text_seq, image_seq = x1[:, :n_text], x1[:, n_text:]
        mean = self.cfg.pooling == "mean"
        pooled = [_masked_mean(text_seq, t_pad) if mean else text_seq[:, 0]]
        entity_seq = None
        if self.use_entities:
            n_ent = ent.shape[1]
            x2 = self.cross(self._cross_input(ent, text, TITLE, first=ENTITY),
                            src_key_padding_mask=torch.cat([ent_pad, t_pad], 1))
            entity_seq = x2[:, :n_ent]
            pooled.append(_masked_mean(x2[:, n_ent:], t_pad) if mean  # the title in the
                          else x2[:, n_ent])  # [entity; text] pass (mean, or its [CLS])
        if self.cfg.retrieval_features == "single":
            text_vec, image_vec = self._single_vectors(text_single, entity_single, image_single)
        else:
            text_vec = F.normalize(self.text_head(torch.cat(pooled, -1)), dim=-1)
            image_vec = F.normalize(self.image_head(_masked_mean(image_seq, i_pad) if mean
                                                    else image_seq[:, 0]), dim=-1)
        image_vec = image_vec * has_image[:, None]
        return StreamOutputs(text_seq, image_seq, entity_seq, text_single, entity_single,
                             image_single, text_vec, image_vec)

    def _cross_input(self, a: torch.Tensor, b: torch.Tensor, second: int, first: int = TITLE
                     ) -> torch.Tensor:
        """[a; b] for the cross transformer; with ``cross_embeddings`` each part gets its own
        positions (from 0) and its segment (``first``, ``second``) added, as CAPTURE's
        ``module_cross`` does."""
        if not self.cfg.cross_embeddings:
            return torch.cat([a, b], 1)
        parts = []
        for x, segment in ((a, first), (b, second)):
            pos = torch.arange(x.shape[1], device=x.device)
            extra = self.cross_position(pos) + self.cross_segment.weight[segment]
            parts.append(x + extra.to(x.dtype))
        return torch.cat(parts, 1)

    def _single_vectors(self, text_single: torch.Tensor, entity_single: Optional[torch.Tensor],
                        image_single: torch.Tensor, entities: Optional[torch.Tensor] = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(text, image) retrieval vectors from the single streams through the InfoNCE heads:
        the text half mixes the title, the entity sequence and (``entities``, from ``encode``)
        the mean of the item's entities encoded alone, by ``retrieval_weights``."""
        w = self.cfg.retrieval_weights
        text = w.get("text", 1.0) * F.normalize(self.itc_text(text_single), dim=-1)
        if entity_single is not None:
            text = text + w.get("entity", 1.0) * F.normalize(self.itc_text(entity_single), dim=-1)
        if entities is not None:
            text = text + w.get("graph", 0.0) * entities
        image = w.get("image", 1.0) * F.normalize(self.itc_image(image_single), dim=-1)
        return F.normalize(text, dim=-1), image

    def entity_vectors(self, entity_token_ids: torch.Tensor, entity_mask: torch.Tensor
                       ) -> torch.Tensor:
        """[B, E] the mean of each item's entities [B, M, t], each encoded alone as the graph
        losses see it (``entity_reps``), through the text InfoNCE head, L2-normalised; zeros
        for an item without entities. Measured on synth: the strongest single readout once
        graph positives are aliases (results/quality_log.md section 9)."""
        chosen = entity_mask.bool()
        reps = torch.zeros(*chosen.shape, self.cfg.hidden, device=entity_token_ids.device,
                           dtype=self.float_dtype())
        if chosen.any():
            reps[chosen] = self.entity_reps(entity_token_ids[chosen]).to(reps.dtype)
        pooled = _masked_mean(reps, ~chosen)
        return F.normalize(self.itc_text(pooled), dim=-1) * chosen.any(1, keepdim=True)

    # -- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Retrieval vectors for a batch of encoded items (``model_inputs`` columns, and
        ``entity_token_ids``/``entity_mask`` for the ``graph`` part of the single readout):
        ``text`` and ``image`` [B, E] and ``item`` = [image; text] [B, 2E]. Eval mode, no
        masking, no pretraining heads."""
        was_training = self.training
        self.eval()
        try:
            inputs = model_inputs(batch, self.device_of(), self.float_dtype())
            out = self(*inputs)
            text_vec = out.text_vec
            if (self.cfg.retrieval_features == "single" and self.use_entities
                    and self.cfg.retrieval_weights.get("graph", 0.0) > 0
                    and "entity_token_ids" in batch):
                device = self.device_of()
                ents = self.entity_vectors(
                    column_tensor(batch["entity_token_ids"], device, torch.long),
                    column_tensor(batch["entity_mask"], device, torch.bool))
                text_vec, _ = self._single_vectors(out.text_single, out.entity_single,
                                                   out.image_single, ents)
        finally:
            self.train(was_training)
        return {"text": text_vec, "image": out.image_vec,
                "item": torch.cat([out.image_vec, text_vec], -1)}

    def device_of(self) -> torch.device:
        return next(self.parameters()).device

    def float_dtype(self) -> torch.dtype:
        return self.regions.feature.weight.dtype

    def bert_parameter_names(self) -> list[str]:
        """Parameters loaded from a BERT checkpoint (they train at ``train.bert_lr_scale``)."""
        if not self.cfg.bert_checkpoint:
            return []
        return [f"text.{name}" for name, _ in self.text.named_parameters()]


def column_tensor(x: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A batch column (numpy or torch) as a ``dtype`` tensor on ``device``. Ray Data hands
    columns out as read-only numpy views, which torch warns about: those are copied first."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = np.array(x)
    return torch.as_tensor(x).to(device=device, dtype=dtype)


def model_inputs(batch: dict[str, Any], device: torch.device,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Shard columns (numpy or torch) -> forward's arguments, typed and on ``device``.
    Region features (stored as float16) take the model's float ``dtype`` (float32, or bf16
    under DeepSpeed bf16) and are never cast to integers."""
    def t(name: str, dtype: torch.dtype) -> torch.Tensor:
        return column_tensor(batch[name], device, dtype)

    return (t("title_ids", torch.long), t("entity_seq_ids", torch.long),
            t("region_feats", dtype), t("region_boxes", dtype), t("image_mask", torch.bool))


STREAMS = {  # parameter-name prefix -> stream, for `egecmp model-info`
    "text.": "text stream (embeddings + BERT layers)",
    "regions": "image stream", "image.": "image stream", "image_to_text": "image stream",
    "coattn": "co-attention", "cross": "cross transformer",
    "text_head": "retrieval heads", "image_head": "retrieval heads",
    "token_head": "pretraining heads", "region_head": "pretraining heads",
    "itc_": "contrastive heads (the single-stream retrieval readout)",
}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per stream (the keys of ``STREAMS``' values) and ``total``."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        stream = next(v for k, v in STREAMS.items() if name.startswith(k))
        counts[stream] = counts.get(stream, 0) + p.numel()
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
