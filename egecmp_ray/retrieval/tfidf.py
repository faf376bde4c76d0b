"""The text baseline: character n-gram TF-IDF over cleaned titles, exact cosine search.

Character n-grams (1-3) suit Chinese titles, which have no spaces, and let spellings such as
``sk2``/``skii`` share grams. The gallery matrix is a torch sparse (COO) matrix; queries are
scored in chunks against it, so memory is ``gallery x chunk``, never ``queries x gallery``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import torch

from egecmp_ray.data.clean import clean_title

NGRAMS = (1, 2, 3)


def grams(title: str) -> Counter:
    text = " ".join(clean_title(title).lower().split())
    return Counter(text[i:i + n] for n in NGRAMS for i in range(len(text) - n + 1)
                   if not text[i:i + n].isspace())


class TfidfIndex:
    """IDF fitted on the gallery titles; rows L2-normalised so a dot product is the cosine."""

    def __init__(self, gallery_titles: Sequence[str]):
        counts = [grams(t) for t in gallery_titles]
        df = Counter(g for c in counts for g in c)
        self.vocab = {g: i for i, g in enumerate(sorted(df))}
        n = len(gallery_titles)
        self.idf = torch.tensor([math.log((1 + n) / (1 + df[g])) + 1.0 for g in sorted(df)])
        self.gallery = self._matrix(counts)

    def _matrix(self, counts: list[Counter]) -> torch.Tensor:
        rows, cols, vals = [], [], []
        for r, c in enumerate(counts):
            for g, tf in c.items():
                j = self.vocab.get(g)
                if j is not None:
                    rows.append(r)
                    cols.append(j)
                    vals.append(tf * float(self.idf[j]))
        m = torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1),
                                    torch.tensor(vals, dtype=torch.float32),
                                    (len(counts), len(self.vocab)), check_invariants=True).coalesce()
        norms = torch.zeros(len(counts)).index_add_(0, m.indices()[0], m.values() ** 2).sqrt()
        return torch.sparse_coo_tensor(m.indices(), m.values() / norms[m.indices()[0]].clamp(min=1e-12),
                                       m.shape, check_invariants=True).coalesce()

    def search(self, query_titles: Sequence[str], top_k: int, chunk: int = 256
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, gallery row indices) ``[len(queries), top_k]`` by cosine."""
        k = min(top_k, self.gallery.shape[0])
        scores, idx = [], []
        for start in range(0, len(query_titles), chunk):
            q = self._matrix([grams(t) for t in query_titles[start:start + chunk]]).to_dense()
            sims = torch.sparse.mm(self.gallery, q.T).T  # [chunk, gallery]
            s, i = sims.topk(k, dim=1)
            scores.append(s)
            idx.append(i)
        if not scores:
            return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
        return torch.cat(scores), torch.cat(idx)
