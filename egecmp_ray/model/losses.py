"""Contrastive and graph-injection losses (DESIGN.md section 4, objectives 4-6).

Distributed concerns live here and only here: ``gather_with_grad`` gathers features from every
data-parallel worker (with gradients, as open_clip's ClipLoss does) so InfoNCE sees the global
batch. Without an initialised process group everything is local.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums every worker's gradient for this worker's rows (the
    gradient of a gathered copy lives on the worker whose loss used it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` [n, ...] from all workers (sizes may differ: padded, then cut).
    Returns (gathered, offset of this worker's rows); gradients flow back to the local rows."""
    rank, world = _world()
    if world == 1:
        return x, 0
    import torch.distributed as dist

    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_l = [int(s.item()) for s in sizes]
    width = max(sizes_l)
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, width - x.shape[0]))
    gathered = _AllGather.apply(padded)
    return (torch.cat([gathered[r * width:r * width + n] for r, n in enumerate(sizes_l)]),
            sum(sizes_l[:rank]))


def _fp32(device: torch.device):
    """Logits in float32 even under autocast (bf16 logits / 0.07 lose the ranking)."""
    return torch.autocast(device_type=device.type, enabled=False)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` (L2-normalised here), with
    in-batch negatives gathered across workers. A worker with no rows still joins the
    gathers and returns an attached 0, so every worker runs the same collectives forward
    and backward."""
    with _fp32(a.device):
        a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
        all_a, offset = gather_with_grad(a)
        all_b, _ = gather_with_grad(b)
        target = torch.arange(a.shape[0], device=a.device) + offset
        total = (F.cross_entropy(a @ all_b.T / temperature, target, reduction="sum")
                 + F.cross_entropy(b @ all_a.T / temperature, target, reduction="sum"))
        return total / (2 * max(a.shape[0], 1))


def graph_node_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                    neg_valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """Node-based injection: InfoNCE pulling each anchor entity [A, H] to one graph-positive
    [A, H] and away from its graph-negatives [A, Q, H] (``neg_valid`` [A, Q] marks real ones)."""
    with _fp32(anchor.device):
        anchor = F.normalize(anchor.float(), dim=-1)
        positive = F.normalize(positive.float(), dim=-1)
        negatives = F.normalize(negatives.float(), dim=-1)
        pos = (anchor * positive).sum(-1, keepdim=True)
        neg = torch.einsum("ah,aqh->aq", anchor, negatives).masked_fill(~neg_valid, float("-inf"))
        logits = torch.cat([pos, neg], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long,
                                                   device=anchor.device))


def subgraph_scores(reps: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine inside each subgraph. ``members`` [S, K] indexes rows of ``reps``
    (-1 = absent); the S similarity matrices are sum-pooled with PyG's ``global_add_pool``."""
    from torch_geometric.nn import global_add_pool

    with _fp32(reps.device):
        reps = F.normalize(reps.float(), dim=-1)
        valid = members >= 0
        x = reps[members.clamp(min=0)]  # [S, K, H]
        sims = torch.einsum("skh,sjh->skj", x, x)
        pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(
            members.shape[1], dtype=torch.bool, device=reps.device)[None]
        batch = torch.arange(len(members), device=reps.device)[:, None, None].expand_as(sims)
        # every entry, the pairs not counted as zeros: a boolean selection would wait on the
        # device for its size (see pretrain_losses)
        total = global_add_pool((sims * pair).reshape(-1, 1), batch.reshape(-1),
                                size=len(members))[:, 0]
        return total / pair.sum((1, 2)).clamp(min=1)


def graph_subgraph_loss(reps: torch.Tensor, pos_members: torch.Tensor, neg_members: torch.Tensor,
                        margin: float) -> torch.Tensor:
    """Subgraph-based injection: each anchor's positive subgraph must score ``margin`` above
    its negative subgraph (margin ranking on mean pairwise similarity). Both subgraphs hold
    the anchor, so the two scores compare the same entity's neighbourhoods."""
    return F.relu(margin - subgraph_scores(reps, pos_members)
                  + subgraph_scores(reps, neg_members)).mean()


def mean_or_zero(total: torch.Tensor, count: int) -> torch.Tensor:
    """``total / count``, or an attached 0 when nothing was selected this step. Heads always
    run (on empty selections too): under ZeRO-3 every worker must run the same modules."""
    return total / max(count, 1)
