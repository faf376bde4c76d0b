"""Masking for the pretraining objectives (DESIGN.md section 4), as pure tensor functions.

The model is always fed what these return, never the originals: the released research code's
MLM/MRM saw unmasked inputs. ``IGNORE`` marks positions with nothing to predict.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

IGNORE = -100


def rand(shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device
         ) -> torch.Tensor:
    """Uniform [0, 1) drawn on the generator's device (a CPU generator drives CUDA runs)."""
    src = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=src).to(device)


def randint(high: int, shape: Sequence[int], generator: Optional[torch.Generator],
            device: torch.device) -> torch.Tensor:
    src = generator.device if generator is not None else device
    return torch.randint(0, high, tuple(shape), generator=generator, device=src).to(device)


def mask_tokens(ids: torch.Tensor, maskable: torch.Tensor, mask_id: int, vocab_size: int,
                prob: float, generator: Optional[torch.Generator] = None,
                special_ids: Sequence[int] = (), force: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT recipe: pick ``prob`` of the ``maskable`` positions (plus the ``force``d ones);
    of those 80% become ``mask_id``, 10% a random token (never one of ``special_ids``: a random
    [PAD] would change the attention mask), 10% stay. Returns (masked ids, labels, IGNORE where
    nothing is predicted)."""
    device = ids.device
    chosen = (rand(ids.shape, generator, device) < prob) & maskable
    if force is not None:
        chosen |= force & maskable
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    action = rand(ids.shape, generator, device)
    masked = ids.clone()
    masked[chosen & (action < 0.8)] = mask_id
    random_ids = randint(vocab_size, ids.shape, generator, device)
    if special_ids:  # a special draw keeps the original token instead
        special = torch.isin(random_ids, torch.tensor(list(special_ids), device=device))
        random_ids = torch.where(special, ids, random_ids)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    masked[to_random] = random_ids[to_random]
    return masked, labels


def mask_regions(feats: torch.Tensor, has_image: torch.Tensor, prob: float,
                 generator: Optional[torch.Generator] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``prob`` of the regions of items that have an image; zero 90% of those (the rest
    are kept, as in ViLBERT). Returns (masked features, bool [B, R] of regions to regress)."""
    b, r = feats.shape[:2]
    chosen = (rand((b, r), generator, feats.device) < prob) & has_image[:, None]
    zero = chosen & (rand((b, r), generator, feats.device) < 0.9)
    return feats.masked_fill(zero[..., None], 0.0), chosen


def entity_spans(entity_seq: torch.Tensor, title: torch.Tensor, delimiters: torch.Tensor,
                 max_entities: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each entity of the ``[SEP]``-joined entity sequence [B, T] sits: its own positions
    there, and every occurrence of its tokens in ``title`` [B, T'] (bool [B, M, T], [B, M, T']).
    ``delimiters`` [B, T] marks [CLS]/[SEP]/[PAD] positions of ``entity_seq``."""
    b, t = entity_seq.shape
    pos = torch.arange(t, device=entity_seq.device).expand(b, t)
    seg = delimiters.long().cumsum(1) - 1  # entity index of each position after [CLS]
    last = torch.where(delimiters, pos, torch.zeros_like(pos)).cummax(1).values
    rank = pos - last - 1  # position inside its entity
    own = ~delimiters & (seg < max_entities)
    in_seq = own[:, None, :] & (seg[:, None, :] == torch.arange(max_entities, device=pos.device)[None, :, None])
    width = int(rank[own].max().item()) + 1 if own.any() else 1
    core = torch.full((b, max_entities, width), -1, dtype=entity_seq.dtype, device=pos.device)
    bi, ti = own.nonzero(as_tuple=True)
    core[bi, seg[bi, ti], rank[bi, ti]] = entity_seq[bi, ti]
    length = (core >= 0).sum(-1)  # [B, M]
    n_title = title.shape[1]
    in_title = torch.zeros((b, max_entities, n_title), dtype=torch.bool, device=pos.device)
    if n_title < width:
        return in_seq, in_title
    windows = title.unfold(1, width, 1)  # [B, W, width]
    same = (windows[:, None] == core[:, :, None]) | (core[:, :, None] < 0)
    starts = same.all(-1) & (length > 0)[..., None]  # [B, M, W]
    for k in range(width):
        hit = starts & (k < length)[..., None]
        in_title[:, :, k:k + hit.shape[-1]] |= hit
    return in_seq, in_title
