"""search.py: both dense paths against a brute-force sort (ties included), BM25 against a per-pair loop, TREC
writing (round trip through evaluate.read_run) and the CLI's error lines."""
import math
import os
import random
from collections import Counter

import numpy as np
import pytest
import torch

import evaluate
import search


# ---------------------------------------------------------------- references
def brute(q, p, k):
    """The full score matrix, stably sorted: score descending, then lower passage row (the module's tie rule)."""
    s, i = (q @ p.T).sort(dim=1, descending=True, stable=True)
    return s[:, :k], i[:, :k]


def dyadic(n, d, seed, lo=-64, hi=64, scale=16):
    """Embeddings k / scale with small integers k: every product and partial sum is exact in float32, so every
    summation order (block shapes, BLAS kernels) gives the same scores and the comparison can be exact."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (n, d), generator=g).float() / scale


def integer(n, d, seed):
    """Entries in {-1, 0, 1}: a handful of distinct scores, so ties everywhere, at the k-th place too."""
    return dyadic(n, d, seed, -1, 1, 1)


PATHS = {  # name -> callable(q, p, k). Threshold path: tiny blocks (fewer than k groups in the first block, where
    #        everything is a candidate), single-passage groups, a merge after every block, and a first block of
    #        exactly k groups (its threshold is the k-th largest group maximum)
    "exact_topk": lambda q, p, k: search.exact_topk(q, p, k),
    "exact_topk_blocks": lambda q, p, k: search.exact_topk(q, p, k, q_block=3, p_block=7),
    "blocked": lambda q, p, k: search.topk_blocked(q, p, k, q_block=2, p_block=5),
    "threshold": lambda q, p, k: search.topk_threshold(q, p, k, q_block=4, p_block=32),
    "threshold_merge_each_block": lambda q, p, k: search.topk_threshold(q, p, k, p_block=6, group=3, merge_every=0),
    "threshold_group_1": lambda q, p, k: search.topk_threshold(q, p, k, p_block=1, group=1),
    "threshold_first_block_groups": lambda q, p, k: search.topk_threshold(q, p, k, p_block=min(len(p), 16 * k),
                                                                           group=min(len(p), 16 * k) // k),
}

CASES = [  # Q, N, d, k, data
    (5, 1000, 8, 10, dyadic),       # N not a multiple of any block
    (7, 300, 4, 50, dyadic),        # k larger than the passage blocks
    (4, 37, 3, 37, dyadic),         # k == N
    (6, 500, 3, 20, integer),       # many exact ties, at the k-th place as well
    (1, 200, 5, 7, integer),        # Q == 1
    (9, 64, 16, 1, dyadic),         # k == 1
]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("Q,N,d,k,data", CASES)
def test_dense_equals_brute_force(path, Q, N, d, k, data):
    q, p = data(Q, d, seed=1), data(N, d, seed=2)
    s, i = PATHS[path](q, p, k)
    bs, bi = brute(q, p, k)
    assert s.dtype == torch.float32 and i.dtype == torch.int64 and s.shape == i.shape == (Q, k)
    assert torch.equal(i, bi)
    assert torch.equal(s, bs)


def test_threshold_path_with_real_thresholds_and_ties():
    """Enough passages after the first block for thresholds to reject most groups, ties at the k-th place, several
    query blocks and a partial last group: the fast path's pruning and merging are what is tested."""
    for data in (integer, dyadic):
        q, p = data(10, 4, seed=3), data(5003, 4, seed=4)
        bs, bi = brute(q, p, 25)
        for kw in [dict(q_block=3, p_block=64), dict(p_block=400, group=8, merge_every=1), dict(p_block=800, group=4)]:
            s, i = search.topk_threshold(q, p, 25, **kw)
            assert torch.equal(i, bi) and torch.equal(s, bs)


def test_float_data_agrees_up_to_rounding():
    """Gaussian embeddings: scores of different kernels may differ in the last bit, so compare the score lists and
    require every returned id's recomputed score to match its returned score."""
    g = torch.Generator().manual_seed(5)
    q, p = torch.randn(8, 32, generator=g), torch.randn(1000, 32, generator=g)
    bs, _ = brute(q, p, 40)
    for path in ("exact_topk", "blocked", "threshold"):
        s, i = PATHS[path](q, p, 40)
        assert torch.allclose(s, bs, atol=1e-5)
        assert torch.allclose((q[:, None, :] * p[i]).sum(-1), s, atol=1e-5)


def test_select_topk_ties_go_to_lower_columns():
    s = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    v, c = search.select_topk(s, 3)
    assert v.tolist() == [[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]]
    assert c.tolist() == [[1, 2, 4], [0, 1, 2]]
    with pytest.raises(ValueError, match="NaN"):
        search.select_topk(torch.tensor([[1.0, math.nan, 0.0]]), 2)


def test_dense_errors():
    q, p = torch.zeros(2, 4), torch.zeros(5, 4)
    for k in (0, 6):
        with pytest.raises(ValueError, match="k = "):
            search.exact_topk(q, p, k)
    with pytest.raises(ValueError, match="float32"):
        search.exact_topk(q.double(), p.double(), 2)
    with pytest.raises(ValueError, match=r"\[Q, d\]"):
        search.exact_topk(q, torch.zeros(5, 3), 2)


def test_no_queries():
    s, i = search.exact_topk(torch.zeros(0, 4), torch.zeros(5, 4), 3)
    assert s.shape == i.shape == (0, 3)


# ---------------------------------------------------------------- BM25
def slow_bm25(docs, query, k1=0.9, b=0.4):
    """BM25 of one query against every doc, one pair at a time, query tokens counted with repetition."""
    N, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    df = Counter(t for d in docs for t in set(d))
    out = []
    for d in docs:
        tf, s = Counter(d), 0.0
        for t in query:
            if tf[t]:
                idf = math.log(1 + (N - df[t] + 0.5) / (df[t] + 0.5))
                s += idf * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
        out.append(s)
    return out


def random_corpus(seed, n_docs=80, n_queries=25, vocab=40):
    rng = random.Random(seed)
    docs = [[rng.randrange(vocab) for _ in range(rng.randint(0, 15))] for _ in range(n_docs)]
    queries = [[rng.randrange(vocab + 5) for _ in range(rng.randint(1, 6))] for _ in range(n_queries)]
    return docs, queries + [[]]  # tokens past the vocabulary, repeated tokens, an empty query


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k1,b", [(0.9, 0.4), (1.2, 0.75)])
def test_bm25_equals_slow_loop(seed, k1, b):
    docs, queries = random_corpus(seed)
    ref = torch.tensor([slow_bm25(docs, qq, k1, b) for qq in queries], dtype=torch.float64)
    bm = search.BM25(docs, k1, b)
    assert torch.allclose(bm.scores(queries), ref, rtol=1e-12, atol=1e-12)
    for k, block in [(len(docs), 1 << 21), (10, 50)]:  # all passages; and many small query blocks
        s, i = bm.search(queries, k, postings_per_block=block)
        bs, bi = ref.float().sort(dim=1, descending=True, stable=True)
        assert torch.equal(i, bi[:, :k]) and torch.equal(s, bs[:, :k])


def test_bm25_zero_scores_follow_in_id_order_and_empty_query():
    docs = [[1, 2], [3], [1], [4, 4], []]
    s, i = search.BM25(docs).search([[3], []], 5)
    assert i[0].tolist() == [1, 0, 2, 3, 4] and s[0, 0] > 0 and s[0, 1:].eq(0).all()
    assert i[1].tolist() == [0, 1, 2, 3, 4] and s[1].eq(0).all()


def test_bm25_repeated_query_token_counts_twice():
    bm = search.BM25([[1, 2, 2], [2, 3], [4]])
    once, twice = bm.scores([[2]]), bm.scores([[2, 2]])
    assert torch.allclose(twice, 2 * once) and once[0, 0] > 0


def test_bm25_errors():
    with pytest.raises(ValueError, match="no documents"):
        search.BM25([])
    with pytest.raises(ValueError, match="negative"):
        search.BM25([[1, -2]])
    bm = search.BM25([[1], [2]])
    with pytest.raises(ValueError, match="k = 3"):
        bm.search([[1]], 3)


# ---------------------------------------------------------------- TREC runs and the CLI
def test_write_trec_round_trip(tmp_path):
    path = tmp_path / "run.trec"
    scores = torch.tensor([[2.5, 1.0, 1.0], [0.123456789, -3.0, 0.0]])
    ids = torch.tensor([[2, 0, 1], [1, 2, -1]])  # -1: a padded entry, skipped
    search.write_trec(path, ["qa", "qb"], ["p0", "p1", "p2"], scores, ids, tag="t")
    lines = path.read_text().splitlines()
    assert lines[0] == "qa Q0 p2 1 2.5 t" and len(lines) == 5 and lines[-1].startswith("qb Q0 p2 2 -3 ")
    run = evaluate.read_run(path)
    assert run["qa"] == {"p2": 2.5, "p0": 1.0, "p1": 1.0} and run["qb"].keys() == {"p1", "p2"}
    assert np.float32(run["qb"]["p1"]) == scores[1, 0].item()  # 9 digits give back the float32 exactly
    assert os.listdir(tmp_path) == ["run.trec"]  # no temp file left
    with pytest.raises(ValueError, match="whitespace"):
        search.write_trec(tmp_path / "bad.trec", ["q a", "qb"], ["p0", "p1", "p2"], scores, ids, tag="t")
    assert sorted(os.listdir(tmp_path)) == ["run.trec"]


def write_inputs(tmp_path, Q=3, N=20, d=4):
    q, p = dyadic(Q, d, seed=7).numpy(), dyadic(N, d, seed=8).numpy()
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "p.npy", p)
    (tmp_path / "qids.txt").write_text("".join(f"q{i}\n" for i in range(Q)))
    (tmp_path / "pids.txt").write_text("".join(f"doc{i}\n" for i in range(N)))
    return q, p


def test_cli_writes_the_run(tmp_path, capsys):
    q, p = write_inputs(tmp_path)
    out = tmp_path / "run.trec"
    argv = ["--queries", str(tmp_path / "q.npy"), "--passages", str(tmp_path / "p.npy"), "--qids",
            str(tmp_path / "qids.txt"), "--pids", str(tmp_path / "pids.txt"), "--k", "5", "--out", str(out)]
    assert search.main(argv) == 0
    _, bi = brute(torch.from_numpy(q), torch.from_numpy(p), 5)
    rows = [line.split() for line in out.read_text().splitlines()]
    assert [(r[0], r[2], r[3]) for r in rows] == [(f"q{a}", f"doc{i}", str(j + 1))
                                                  for a in range(3) for j, i in enumerate(bi[a].tolist())]
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("breakage,message", [
    ("float64", "p.npy:0: expected a 2-D float32 array"),
    ("pids", "pids.txt:2: duplicate id 'doc0'"),
    ("qids", "qids.txt:3: 2 ids for 3 query rows"),
    ("k", "--k 21: must be in 1..20"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, breakage, message):
    write_inputs(tmp_path)
    k = "5"
    if breakage == "float64":
        np.save(tmp_path / "p.npy", np.zeros((20, 4)))
    elif breakage == "pids":
        (tmp_path / "pids.txt").write_text("doc0\ndoc0\n" + "".join(f"doc{i}\n" for i in range(2, 20)))
    elif breakage == "qids":
        (tmp_path / "qids.txt").write_text("q0\nq1\n")
    else:
        k = "21"
    argv = ["--queries", str(tmp_path / "q.npy"), "--passages", str(tmp_path / "p.npy"), "--qids",
            str(tmp_path / "qids.txt"), "--pids", str(tmp_path / "pids.txt"), "--k", k, "--out",
            str(tmp_path / "run.trec")]
    assert search.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run.trec").exists()
