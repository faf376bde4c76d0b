"""Graph learning: a 2-layer GCN encoder in ``torch_geometric.nn.GAE``, on a sparse graph
(a CSR adjacency: each layer's message passing is one sparse-dense product).

The original refines the entity graph each epoch with an adaptive graph auto-encoder whose
neighbourhoods grow (3, then +5 a round). Here each round trains the GAE on the current edges,
then adds each node's top-(3 + 5·round) neighbours in embedding space. Node similarity is the
cosine of the learned embeddings: positives > ``positive_sim``, negatives < ``negative_sim``.
Nothing here is ``N x N`` but the Gram matrix of a small graph's loss (:func:`recon_loss`).
The trainer calls :func:`learn_graph` again each epoch with node features taken from the model.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from egecmp_ray.config import EntityConfig
from egecmp_ray.entities.graph import topk_similar


class GCNEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        from torch_geometric.nn import GCNConv

        # cached: a model trains on one graph, so each layer normalises its adjacency once
        self.conv1 = GCNConv(in_dim, hidden, cached=True)
        self.conv2 = GCNConv(hidden, out_dim, cached=True)

    def forward(self, x: torch.Tensor, adj_t: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x, adj_t)), adj_t)


def adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``edge_index`` as the CSR ``adj_t`` GCNConv takes (row = target node). Against the
    edge list (gather, multiply, scatter-add over every edge, twice a layer with the
    backward), the GAE epoch takes half the time (1,260 nodes, 45k edges: 96 -> 48 ms on one
    thread; 10k nodes, 400k edges: 1.83 -> 0.86 s). It sums in another order, so embeddings
    differ from the edge-list path's in the last bits (3e-6 after 2 x 50 epochs); on a synth
    preprocess graph (545 entities) the grown edges and the positive and negative sets came out
    identical, on a random graph the rounds after the first drift apart. Runs stay identical."""
    from torch_geometric.utils import to_torch_csr_tensor

    # Invariants checked once as it is built (opting in also silences torch's warning that
    # they are not), and torch's "Sparse CSR tensor support is in beta state" kept quiet.
    with warnings.catch_warnings(), torch.sparse.check_sparse_tensor_invariants():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        return to_torch_csr_tensor(edge_index.flip(0), size=(num_nodes, num_nodes))


@dataclass
class GraphSets:
    """Per node: graph-positive and graph-negative node ids (-1 padded), and embeddings."""

    positives: torch.Tensor  # [N, P] long
    negatives: torch.Tensor  # [N, Q] long
    embeddings: torch.Tensor  # [N, out] float, L2-normalised


# A Gram matrix pays when the node pairs scored outnumber N^2 / this: measured at N = 1,260
# and 110k pairs (pos + neg, one thread), the pair gathers took 65 ms an epoch, the Gram 13 ms.
GRAM_PAIRS_RATIO = 32


class _GramDot(torch.autograd.Function):
    """Inner products ``z[i] . z[j]`` of the pairs ``flat = i * N + j``, read from ``z z^T``:
    one matrix product forward and one backward, where gathering both rows of each pair
    (and scattering their gradients back) costs a pass over every pair's 2 x D values."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z, flat)
        return (z @ z.T).reshape(-1).index_select(0, flat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, flat = ctx.saved_tensors
        n = z.shape[0]
        g = torch.zeros(n * n, dtype=grad.dtype, device=grad.device).index_add_(0, flat, grad).view(n, n)
        return (g + g.T) @ z, None


def recon_loss(z: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """PyG's ``GAE.recon_loss`` (binary cross-entropy of the inner-product decoder on positive
    and negative pairs). Small graphs score all pairs from one Gram matrix (N^2 floats, so
    only while that is a few pair gathers' worth); larger ones gather, as PyG does. The two
    sum in another order (last-bit differences); a graph always takes the same path."""
    from torch_geometric.nn import GAE
    from torch_geometric.nn.models.autoencoder import EPS

    n = z.shape[0]
    if n * n > GRAM_PAIRS_RATIO * (pos.shape[1] + neg.shape[1]):
        return GAE(nn.Identity()).recon_loss(z, pos, neg)
    logits = _GramDot.apply(z, torch.cat([pos[0] * n + pos[1], neg[0] * n + neg[1]]))
    p = torch.sigmoid(logits)
    k = pos.shape[1]
    return -torch.log(p[:k] + EPS).mean() - torch.log(1 - p[k:] + EPS).mean()


def train_gae(x: torch.Tensor, edge_index: torch.Tensor, cfg: EntityConfig, seed: int = 0
              ) -> torch.Tensor:
    """Fit a GAE on ``edge_index`` (negative edges sampled sparsely); returns embeddings."""
    from torch_geometric.nn import GAE

    if edge_index.numel() == 0:  # nothing to reconstruct: the features are the embedding
        return x.clone()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GAE(GCNEncoder(x.shape[1], cfg.gae_hidden, cfg.gae_out))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    n, e = x.shape[0], edge_index.shape[1]
    adj_t = adjacency(edge_index, n)
    for _ in range(cfg.gae_epochs):
        opt.zero_grad()
        z = model.encode(x, adj_t)
        # Uniform random node pairs as negatives (sparse, like PyG's default, whose
        # pure-Python `random.sample` over N^2 pairs was a third of the step's time).
        neg = torch.randint(0, n, (2, e), generator=gen)
        loss = recon_loss(z, edge_index, neg)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return model.encode(x, adj_t)


def grow_edges(z: torch.Tensor, k: int, min_sim: float) -> torch.Tensor:
    """Symmetric edges from each node to its ``k`` nearest neighbours in embedding space
    (those with cosine above ``min_sim``: an unrelated nearest node is no neighbour)."""
    idx, sim = topk_similar(torch.nn.functional.normalize(z, dim=1).numpy(), k)
    src = np.repeat(np.arange(len(idx)), idx.shape[1])
    keep = sim.reshape(-1) > min_sim
    src, dst = src[keep], idx.reshape(-1)[keep]
    return torch.from_numpy(np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])])).long()


def _candidate_positives(zn: torch.Tensor, candidates: torch.Tensor, num_pos: int,
                         min_sim: float) -> np.ndarray:
    """Per node, up to ``num_pos`` of its candidate partners (``[2, C]`` pairs) whose
    embedding cosine exceeds ``min_sim``, most similar first; -1 padded."""
    n = len(zn)
    src, dst = candidates[0], candidates[1]
    sim = (zn[src] * zn[dst]).sum(1)
    keep = (sim > min_sim) & (src != dst)
    src, dst, sim = src[keep].numpy(), dst[keep].numpy(), sim[keep].numpy()
    order = np.lexsort((-sim, src))  # by node, then most similar first
    src, dst = src[order], dst[order]
    starts = np.searchsorted(src, np.arange(n))
    rank = np.arange(len(src)) - starts[src]
    pos = np.full((n, num_pos), -1, dtype=np.int64)
    take = rank < num_pos
    pos[src[take], rank[take]] = dst[take]
    return pos


def graph_sets(z: torch.Tensor, cfg: EntityConfig, num_pos: int = 5, num_neg: int = 5,
               seed: int = 0, candidates: torch.Tensor | None = None) -> GraphSets:
    """Positives: nodes with cosine > positive_sim, the most similar first, chosen among
    ``candidates`` (``[2, C]`` node pairs: the graph's context edges) when given, else among
    all nodes; negatives: random nodes with cosine < negative_sim (sampled, then checked; -1
    where none qualified). Measured on synth (benchmarks/graph_audit.py): the top neighbours
    in GAE space are mostly unrelated entities; context-edge candidates are mostly aliases."""
    zn = torch.nn.functional.normalize(z.float(), dim=1)
    n = len(zn)
    if candidates is not None:
        pos = _candidate_positives(zn, candidates.long(), num_pos, cfg.positive_sim)
    else:
        idx, sim = topk_similar(zn.numpy(), num_pos)
        pos = np.where(sim > cfg.positive_sim, idx, -1)
    rng = np.random.default_rng(seed)
    cand = rng.integers(0, max(n, 1), size=(n, num_neg * 4))
    cand_sim = np.einsum("nd,nkd->nk", zn.numpy(), zn.numpy()[cand]) if n else np.zeros((0, 0))
    ok = (cand_sim < cfg.negative_sim) & (cand != np.arange(n)[:, None])
    neg = np.full((n, num_neg), -1, dtype=np.int64)
    for i in range(n):
        chosen = list(dict.fromkeys(cand[i][ok[i]].tolist()))[:num_neg]  # distinct
        neg[i, :len(chosen)] = chosen
    return GraphSets(torch.from_numpy(pos).long(), torch.from_numpy(neg).long(), zn)


@contextlib.contextmanager
def _reproducible():
    """One thread and deterministic kernels (GCN's neighbourhood sums split over several
    threads differ in the last bits run to run, and training epochs turn that into different sets),
    and the caller's torch RNG state restored afterwards. One thread costs speed on big graphs."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.random.fork_rng():
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def learn_graph(x: torch.Tensor, edge_index: torch.Tensor, cfg: EntityConfig, rounds: int = 2,
                seed: int = 0, candidates: torch.Tensor | None = None
                ) -> tuple[GraphSets, torch.Tensor]:
    """Adaptive GAE: ``rounds`` of (train, grow neighbourhoods); returns the sets (positives
    among ``candidates`` when given: see :func:`graph_sets`) and the final (grown) edge index.
    The same inputs give the same outputs. ``x`` may be a model's node features (on a GPU,
    with gradients): the graph step works on a detached CPU copy."""
    x = x.detach().float().cpu()
    edge_index = edge_index.detach().cpu()
    with _reproducible():
        ei = edge_index
        z = train_gae(x, ei, cfg, seed)
        for r in range(1, rounds):
            grown = grow_edges(z, 3 + 5 * (r - 1), cfg.knn_min_sim)
            ei = torch.unique(torch.cat([ei, grown], dim=1), dim=1)
            z = train_gae(x, ei, cfg, seed + r)
        cand = candidates.detach().cpu() if candidates is not None else None
        return graph_sets(z, cfg, seed=seed, candidates=cand), ei
