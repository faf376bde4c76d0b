"""Reusable blocks of the hybrid-stream model: region embeddings, a transformer stack and the
ViLBERT-style bi-attention layer. Streams are assembled from these, not copied per stream.

Masks follow ``torch.nn.MultiheadAttention``: ``pad`` is True where a token is *absent*.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def transformer_stack(width: int, heads: int, ffn: int, layers: int, dropout: float,
                      pre_ln: bool) -> "EncoderStack":
    """``layers`` encoder layers (post-LN like BERT, or pre-LN for the cross transformer)."""
    return EncoderStack(EncoderLayer(width, heads, ffn, dropout, pre_ln), layers,
                        nn.LayerNorm(width) if pre_ln else None)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         pad: torch.Tensor | None, heads: int, dropout_p: float) -> torch.Tensor:
    """Scaled dot-product attention of projected queries [B, Lq, D] over keys and values
    [B, Lk, D] in ``heads`` heads, batch-first throughout; ``pad`` [B, Lk] is True where a key
    is absent (None: none is). Returns [B, Lq, D]."""
    def split(t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, heads, d // heads).transpose(1, 2)

    keep = None if pad is None else ~pad[:, None, None, :]  # [B, 1, 1, Lk]: True = present
    h = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=keep,
                                       dropout_p=dropout_p)
    return h.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters (names, shapes,
    initialisation and its random draws in the same order), batch-first throughout:
    ``nn.MultiheadAttention`` computes in (L, B, E) layout, and the transposes into and out of
    it made its fused backward kernels read rows a batch apart (profiled on an H200)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, -1)
        return self.out_proj(multi_head_attention(q, k, v, pad, self.heads,
                                                  self.p if self.training else 0.0))


class EncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer(batch_first=True, activation="gelu")``'s computation and
    parameter names (checkpoints load either way), on ``SelfAttention``."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float, pre_ln: bool):
        super().__init__()
        self.pre_ln = pre_ln
        self.self_attn = SelfAttention(width, heads, dropout)
        self.linear1 = nn.Linear(width, ffn)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _attend(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        return self.dropout1(self.self_attn(x, pad))

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(F.gelu(self.linear1(x)))))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_ln:
            x = x + self._attend(self.norm1(x), pad)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attend(x, pad))
        return self.norm2(x + self._feed_forward(x))


class EncoderStack(nn.Module):
    """``nn.TransformerEncoder``'s structure and names (``layers.N``, ``norm``): ``n`` copies
    of ``layer`` (deep copies, as it makes them), then ``norm`` when given."""

    def __init__(self, layer: EncoderLayer, n: int, norm: nn.LayerNorm | None):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(n))
        self.norm = norm

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_key_padding_mask)
        return x if self.norm is None else self.norm(x)


class RegionEmbeddings(nn.Module):
    """36 regions x D features + 5-d boxes -> tokens, with a global token first: the mean
    region (full-image box) for items with an image, a learned "no image" token otherwise."""

    def __init__(self, region_dim: int, width: int, dropout: float):
        super().__init__()
        self.feature = nn.Linear(region_dim, width)
        self.box = nn.Linear(5, width)
        self.no_image = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.no_image, std=0.02)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, feats: torch.Tensor, boxes: torch.Tensor, has_image: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns tokens [B, 1+R, W] and the padding mask [B, 1+R] (regions of items without
        an image are absent; their global token is the "no image" token, never absent)."""
        b, r, _ = feats.shape
        full_box = feats.new_tensor([0.0, 0.0, 1.0, 1.0, 1.0]).expand(b, 1, 5)
        global_tok = self.feature(feats.mean(1, keepdim=True)) + self.box(full_box)
        global_tok = torch.where(has_image[:, None, None], global_tok,
                                 self.no_image.to(global_tok.dtype).expand(b, 1, -1))
        regions = self.feature(feats) + self.box(boxes)
        tokens = self.dropout(self.norm(torch.cat([global_tok, regions], dim=1)))
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=feats.device),
                         (~has_image)[:, None].expand(b, r)], dim=1)
        return tokens, pad


class _FeedForward(nn.Module):
    def __init__(self, width: int, ffn: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width),
                                 nn.Dropout(dropout))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.net(x))


class _CrossAttention(nn.Module):
    """``x`` attends to ``y`` in an ``inner``-wide space (queries from ``x``, keys and values
    from ``y``), projected back to ``x``'s width with a residual."""

    def __init__(self, width: int, inner: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.q = nn.Linear(width, inner)
        self.k = nn.Linear(width, inner)
        self.v = nn.Linear(width, inner)
        self.out = nn.Linear(inner, width)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_pad: torch.Tensor) -> torch.Tensor:
        h = multi_head_attention(self.q(x), self.k(y), self.v(y), y_pad, self.heads,
                                 self.p if self.training else 0.0)
        return self.norm(x + self.dropout(self.out(h)))


class BiAttentionLayer(nn.Module):
    """ViLBERT co-attention: each stream attends to the other (queries from itself, keys and
    values from the other), then its own feed-forward."""

    def __init__(self, width: int, inner: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.a_to_b = _CrossAttention(width, inner, heads, dropout)
        self.b_to_a = _CrossAttention(width, inner, heads, dropout)
        self.ffn_a = _FeedForward(width, ffn, dropout)
        self.ffn_b = _FeedForward(width, ffn, dropout)

    def forward(self, a: torch.Tensor, a_pad: torch.Tensor, b: torch.Tensor, b_pad: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        a2 = self.a_to_b(a, b, b_pad)
        b2 = self.b_to_a(b, a, a_pad)
        return self.ffn_a(a2), self.ffn_b(b2)
