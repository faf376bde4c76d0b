"""Entity vocabulary, PMI and kNN edges, graph files, and the GAE sets."""

import numpy as np
import torch

from egecmp_ray.config import load_config
from egecmp_ray.entities import gae, graph


def test_entity_and_pair_counts_are_partial_counts_per_batch():
    batch = {"entities": [["a", "b", "a"], ["b", "c"], [], ["a", "b"]]}
    got = graph.entity_counts(batch)  # an item counts an entity once
    assert dict(zip(got["entity"], got["count"].tolist())) == {"a": 2, "b": 3, "c": 1}
    pairs = graph.pair_counts(batch)  # over every entity, before the vocabulary exists
    sep = graph.PAIR_SEP
    assert dict(zip(pairs["pair"], pairs["count"].tolist())) == {f"a{sep}b": 2, f"b{sep}c": 1}
    none = graph.pair_counts({"entities": [["c"]]})
    assert len(none["pair"]) == len(none["count"]) == 0 and none["count"].dtype == np.int64
    # to node ids: pairs with an entity outside the vocabulary go; src < dst by id
    src, dst, cnt = graph.pair_ids(list(pairs["pair"]), pairs["count"], {"b": 0, "a": 1})
    assert (src.tolist(), dst.tolist(), cnt.tolist()) == ([0], [1], [2])
    src, dst, cnt = graph.pair_ids([], np.zeros(0, np.int64), {"a": 0})
    assert src.dtype == dst.dtype == cnt.dtype == np.int64 and len(src) == len(cnt) == 0


def test_word_counts_are_partial_counts_per_batch():
    from egecmp_ray.entities.tokenizer import word_counts

    got = word_counts({"title": ["SK2 神仙水", "sk2"], "entities": [["sk2"], []]},
                      columns=("title", "entities"))
    assert dict(zip(got["word"], got["count"].tolist())) == {"sk2": 3, "神": 1, "仙": 1, "水": 1}


def test_word_counts_of_entity_lists_are_the_words_of_their_joined_strings():
    """Each distinct string is split once; the counts are those of the rows' texts (an entity
    list as its space-joined string) split one by one."""
    from collections import Counter

    from egecmp_ray.data.synth import generate_rows
    from egecmp_ray.entities.encode import text_batch
    from egecmp_ray.entities.tokenizer import word_counts, words_of

    cfg = load_config(preset="tiny")
    table, _ = generate_rows(cfg.data, "train", 0, 300)
    rows = text_batch({"item_id": table["item_id"].to_pylist(), "title": table["title"].to_pylist()},
                      cfg.entities)
    batch = {"title": rows["title"].to_pylist(),
             "entities": [np.array(e, dtype=object) for e in rows["entities"].to_pylist()]}
    assert sum(len(e) for e in batch["entities"]) > len({x for e in batch["entities"] for x in e})
    got = word_counts(batch, columns=("title", "entities"))
    texts = batch["title"] + [" ".join(e) for e in batch["entities"]]
    assert dict(zip(got["word"], got["count"].tolist())) == Counter(words_of(texts))


def test_vocab_counts_put_entities_pairs_and_words_in_one_table():
    from egecmp_ray.entities.preprocess import ENTITY, PAIR, WORD, vocab_counts

    batch = {"title": ["sk2 水", "水"], "entities": [["sk2", "水"], ["水"]]}
    got = vocab_counts(batch)
    rows = {(int(k), key): int(c) for k, key, c in zip(got["kind"], got["key"], got["count"])}
    assert rows == {(ENTITY, "sk2"): 1, (ENTITY, "水"): 2, (PAIR, f"sk2{graph.PAIR_SEP}水"): 1,
                    (WORD, "sk2"): 2, (WORD, "水"): 4}
    assert not (vocab_counts(batch, words=False)["kind"] == WORD).any()


def test_frequent_counts_keep_each_kinds_frequent_keys_and_count_the_entities_seen():
    import pyarrow as pa

    from egecmp_ray.entities.preprocess import ENTITY, PAIR, SEEN, SUM, WORD, frequent_counts

    summed = pa.table({"kind": pa.array([ENTITY, ENTITY, ENTITY, PAIR, PAIR, WORD], pa.int8()),
                       "key": ["sk2", "水", "rare", "a|b", "c|d", "x"],
                       SUM: pa.array([5, 2, 1, 3, 1, 1], pa.int64())})
    got = frequent_counts(summed, {ENTITY: 2, PAIR: 3, WORD: 2})
    rows = list(zip(got["kind"].to_pylist(), got["key"].to_pylist(), got[SUM].to_pylist()))
    assert rows == [(ENTITY, "sk2", 5), (ENTITY, "水", 2), (PAIR, "a|b", 3), (SEEN, "", 3)]
    empty = frequent_counts(summed.slice(0, 0), {ENTITY: 2, PAIR: 3, WORD: 2})
    assert empty.to_pylist() == [{"kind": SEEN, "key": "", SUM: 0}]


def test_vocab_is_deterministic_and_filtered():
    vocab = graph.make_vocab([("b", 3), ("a", 3), ("c", 1), ("d", 5)], min_count=2)
    assert vocab == [("d", 5), ("a", 3), ("b", 3)]


def test_pmi_edges():
    # 100 items; a and b always together (10 times), c everywhere (50), a-c together 5 times.
    counts = np.array([10, 10, 50], dtype=np.float64)
    e = graph.pmi_edges(np.array([0, 0]), np.array([1, 2]), np.array([10, 5]), counts, 100, 0.0)
    assert list(zip(e["src"], e["dst"])) == [(0, 1)]  # PMI(a,c) = log(5*100/500) = 0: dropped
    assert e["weight"][0] == np.float32(np.log(10 * 100 / 100))


def test_alias_pairs_get_knn_edges():
    names = ["sk2", "skii", "sk-ii", "ahc", "a.h.c", "面霜", "乳霜", "精华液", "lumora", "露摩拉"]
    x = graph.char_ngram_vectors(names)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0)
    e = graph.knn_edges(x, k=2, min_sim=0.2)
    edges = {(names[a], names[b]) for a, b in zip(e["src"], e["dst"])}
    edges |= {(b, a) for a, b in edges}
    for pair in [("sk2", "skii"), ("skii", "sk-ii"), ("ahc", "a.h.c"), ("面霜", "乳霜")]:
        assert pair in edges, pair
    assert ("ahc", "面霜") not in edges


def test_context_edges_join_entities_used_with_the_same_others():
    """Two spellings of a brand never co-occur but share their series; the brand and its
    series co-occur (first-order) and get no context edge unless their contexts match."""
    names = ["ximo", "希摩", "樱彩", "星瓶", "gv", "水瓶", "洁面"]
    pairs = [("ximo", "樱彩"), ("ximo", "星瓶"), ("希摩", "樱彩"), ("希摩", "星瓶"),
             ("gv", "水瓶"), ("gv", "洁面")]
    ids = {n: i for i, n in enumerate(names)}
    cooc = {"src": np.array([ids[a] for a, _ in pairs]), "dst": np.array([ids[b] for _, b in pairs]),
            "weight": np.ones(len(pairs), np.float32)}
    e = graph.context_edges(cooc, len(names), k=2, min_sim=0.5, budget=len(names) * 3)  # blocks
    edges = {(names[a], names[b]) for a, b in zip(e["src"], e["dst"])}
    edges |= {(b, a) for a, b in edges}
    assert ("ximo", "希摩") in edges and ("樱彩", "星瓶") in edges and ("水瓶", "洁面") in edges
    assert ("ximo", "樱彩") not in edges and ("ximo", "gv") not in edges
    assert np.allclose(e["weight"][[i for i, (a, b) in enumerate(zip(e["src"], e["dst"]))
                                     if {names[a], names[b]} == {"ximo", "希摩"}]], 1.0)
    empty = graph.context_edges({"src": np.zeros(0, int), "dst": np.zeros(0, int),
                                 "weight": np.zeros(0, np.float32)}, 3, k=2, min_sim=0.5)
    assert len(empty["src"]) == 0


def test_positives_come_from_candidates_when_given():
    """With candidate pairs, a node's positives are its candidates above positive_sim, most
    similar first, and never a similar node that is not a candidate."""
    cfg = load_config(preset="tiny").entities
    z = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.95, 0.31], [0.0, 1.0], [1.0, 0.01]])
    cand = torch.tensor([[0, 1, 0, 2, 0, 3], [1, 0, 2, 0, 3, 0]])
    sets = gae.graph_sets(z, cfg, num_pos=3, candidates=cand)
    assert sets.positives[0].tolist() == [1, 2, -1]  # 3 is dissimilar; 4 is no candidate
    assert sets.positives[1].tolist() == [0, -1, -1]
    assert (sets.positives[3] == -1).all() and (sets.positives[4] == -1).all()
    plain = gae.graph_sets(z, cfg, num_pos=3)
    assert 4 in plain.positives[0].tolist()  # without candidates: the nearest nodes


def test_topk_blocks_match_brute_force():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    idx, sim = graph.topk_similar(v, 3, block=7)
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    assert (idx == np.argsort(-s, axis=1)[:, :3]).all()
    assert np.allclose(sim, np.sort(s, axis=1)[:, ::-1][:, :3], atol=1e-6)


def test_graph_files_load_into_pyg(tmp_path):
    from torch_geometric.data import Data

    x = torch.randn(4, 3)
    ei, w = graph.edge_index([{"src": np.array([0, 1]), "dst": np.array([1, 2]),
                               "weight": np.array([1.0, 2.0], np.float32)},
                              {"src": np.array([0]), "dst": np.array([1]),
                               "weight": np.array([0.5], np.float32)}], 4)
    assert ei.shape == (2, 4)  # (0,1) once despite two lists, both directions
    graph.save_graph(tmp_path, x, ei, w, 4)
    blob = torch.load(tmp_path / graph.GRAPH_FILE, weights_only=True)  # no pickled classes
    assert set(blob) == {"x", "edge_index", "edge_weight", "num_nodes"}
    data = graph.load_graph(tmp_path)
    assert isinstance(data, Data) and data.num_nodes == 4 and data.edge_index.shape == (2, 4)
    assert getattr(data, "candidates", None) is None  # a graph saved before context edges
    data.validate(raise_on_error=True)
    graph.save_graph(tmp_path, x, ei, w, 4, candidates=ei[:, :2])
    assert graph.load_graph(tmp_path).candidates.tolist() == ei[:, :2].tolist()


def test_gae_learns_clusters_into_positive_and_negative_sets():
    """Two cliques: after the GAE, positives stay in a node's clique, negatives leave it."""
    cfg = load_config(preset="tiny", overrides=["entities.gae_epochs=100"]).entities
    n = 12
    edges = [(a, b) for grp in (range(0, 6), range(6, 12)) for a in grp for b in grp if a < b]
    src, dst = zip(*edges)
    ei = torch.tensor([list(src) + list(dst), list(dst) + list(src)])
    x = torch.eye(n)
    sets, grown = gae.learn_graph(x, ei, cfg, rounds=2, seed=0)
    grown_pairs = set(map(tuple, grown.t().tolist()))
    assert set(map(tuple, ei.t().tolist())) <= grown_pairs  # growing only adds edges
    same = lambda a, b: (a < 6) == (b < 6)  # noqa: E731
    pos = [(i, int(j)) for i in range(n) for j in sets.positives[i] if j >= 0]
    neg = [(i, int(j)) for i in range(n) for j in sets.negatives[i] if j >= 0]
    assert pos and neg
    assert all(same(i, j) for i, j in pos)
    assert all(not same(i, j) for i, j in neg)
    sims = sets.embeddings @ sets.embeddings.T
    assert all(sims[i, j] > cfg.positive_sim for i, j in pos)
    assert all(sims[i, j] < cfg.negative_sim for i, j in neg)


def test_gae_loss_from_the_gram_matrix_is_pygs_loss(monkeypatch):
    """The Gram-matrix path of ``recon_loss`` (small graphs) gives PyG's loss and gradient,
    repeated pairs included; past the size limit the loss is PyG's own computation."""
    from torch_geometric.nn import GAE

    gen = torch.Generator().manual_seed(0)
    n, d, e = 50, 8, 400
    z0 = torch.randn(n, d, generator=gen)
    pos, neg = (torch.randint(0, n, (2, e), generator=gen) for _ in range(2))
    pos[:, :10] = pos[:, 10:20]  # repeated pairs add up

    def loss_and_grad(fn):
        z = z0.clone().requires_grad_()
        loss = fn(z, pos, neg)
        loss.backward()
        return loss.detach(), z.grad

    called = []
    real = gae._GramDot.apply
    monkeypatch.setattr(gae._GramDot, "apply", lambda *a: called.append(1) or real(*a))
    want = loss_and_grad(GAE(torch.nn.Identity()).recon_loss)
    got = loss_and_grad(gae.recon_loss)
    assert called  # n^2 = 2,500 <= 32 x 800 pairs: the Gram path ran
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    called.clear()
    monkeypatch.setattr(gae, "GRAM_PAIRS_RATIO", 1)
    got = loss_and_grad(gae.recon_loss)
    assert not called and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_graph_sets_tiny_and_edgeless_graphs():
    cfg = load_config(preset="tiny").entities
    for n in (1, 2, 3):
        sets, _ = gae.learn_graph(torch.eye(n), torch.zeros((2, 0), dtype=torch.long), cfg)
        assert sets.positives.shape[0] == sets.negatives.shape[0] == n
        assert torch.isfinite(sets.embeddings).all()
    # No edges: the (orthogonal) features are the embeddings, so no node is anyone's positive.
    sets, _ = gae.learn_graph(torch.eye(4), torch.zeros((2, 0), dtype=torch.long), cfg)
    assert (sets.positives == -1).all()
    negs = [j for row in sets.negatives.tolist() for j in row if j >= 0]
    assert negs and all(len(set(r) - {-1}) == len([j for j in r if j >= 0])
                        for r in sets.negatives.tolist())  # distinct


def test_learn_graph_leaves_caller_state_alone():
    import random

    cfg = load_config(preset="tiny").entities
    x = torch.randn(6, 4, requires_grad=True)
    ei = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    random.seed(123)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    gae.learn_graph(x * 2, ei, cfg)  # features with gradients, as the trainer passes them
    assert torch.get_num_threads() == threads
    assert random.random() == random.Random(123).random()  # RNG state restored
