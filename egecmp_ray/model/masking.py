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
                special_ids: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT recipe: pick ``prob`` of the ``maskable`` positions; of those 80% become
    ``mask_id``, 10% a random token (never one of ``special_ids``: a random [PAD] would change
    the attention mask), 10% stay. Returns (masked ids, labels, IGNORE where nothing is
    predicted)."""
    device = ids.device
    chosen = (rand(ids.shape, generator, device) < prob) & maskable
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
