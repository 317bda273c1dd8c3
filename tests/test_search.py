"""search.py: every dense path and first-pass precision against a brute-force sort of exact scores (ties and
near-ties included), exact scores against fractions, the error bounds against the matmul torch runs, BM25 against a
per-pair loop and the CLI's run and error lines."""
import math
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch

import bm25
import search


# ---------------------------------------------------------------- references
def exact(q, p):
    """Exact scores rounded once to float32: float64 products of float32 are exact, and for the data below (small
    d, or the rare pair away from a rounding boundary) their float64 sums round to the correctly rounded float32."""
    return (q.double() @ p.double().T).float()


def brute(q, p, k):
    """The full matrix of exact scores, stably sorted: score descending, then lower passage row (the tie rule)."""
    s, i = exact(q, p).sort(dim=1, descending=True, stable=True)
    return s[:, :k], i[:, :k]


def dyadic(n, d, seed, lo=-64, hi=64, scale=16):
    """Embeddings k / scale with small integers k: every product and partial sum is exact in float32."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (n, d), generator=g).float() / scale


def integer(n, d, seed):
    """Entries in {-1, 0, 1}: a handful of distinct scores, so ties everywhere, at the k-th place too."""
    return dyadic(n, d, seed, -1, 1, 1)


def gaussian(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def near_ties(n, d, seed):
    """Adversarial for the bf16 first pass: 8 base rows, each copied with relative changes of about 2^-9, the size
    of bf16's rounding (exact scores differ, and bf16 ones often rank them the other way), and every third row a
    duplicate of the one before (equal scores: the lower row must win)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, d, generator=g)[torch.arange(n) % 8] * (1 + torch.randn(n, d, generator=g) * 2.0 ** -9)
    return x[torch.arange(n) - (torch.arange(n) % 3 == 2).long()]


def opposed(n, d, seed):
    """Queries (odd seeds) with positive entries, passages (even seeds) with negative ones: every score < 0."""
    x = gaussian(n, d, seed).abs()
    return x if seed % 2 else -x


PATHS = {  # name -> callable(q, p, k): both first-pass precisions, default and tiny blocks, group sizes
    "exact_topk": lambda q, p, k: search.exact_topk(q, p, k),
    "exact_topk_blocks": lambda q, p, k: search.exact_topk(q, p, k, q_block=3, p_block=7),
    "fp32": lambda q, p, k: search.topk_threshold(q, p, k, "fp32"),
    "bf16": lambda q, p, k: search.topk_threshold(q, p, k, "bf16"),
    "fp32_small_blocks": lambda q, p, k: search.topk_threshold(q, p, k, "fp32", q_block=4, p_block=32),
    "bf16_small_blocks": lambda q, p, k: search.topk_threshold(q, p, k, "bf16", q_block=4, p_block=32),
    "bf16_group_3": lambda q, p, k: search.topk_threshold(q, p, k, "bf16", p_block=6, group=3),
    "bf16_group_1": lambda q, p, k: search.topk_threshold(q, p, k, "bf16", p_block=1, group=1),
    "fp32_k_super_groups": lambda q, p, k: search.topk_threshold(  # as few super-groups as k (pass 1's minimum)
        q, p, k, "fp32", p_block=5, group=len(p) // k),
}

CASES = [  # Q, N, d, k, data
    (5, 1000, 8, 10, dyadic),       # N not a multiple of any block
    (7, 300, 4, 50, dyadic),        # k larger than the passage blocks
    (4, 37, 3, 37, dyadic),         # k == N
    (6, 500, 3, 20, integer),       # many exact ties, at the k-th place as well
    (1, 200, 5, 7, integer),        # Q == 1
    (9, 64, 16, 1, dyadic),         # k == 1
    (6, 700, 32, 15, gaussian),     # float data: scores are no sums exact in float32
    (5, 600, 12, 25, near_ties),    # scores closer than bf16 can tell, duplicates
    (4, 400, 6, 10, opposed),       # every score negative: maxima of values, not of bits
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


def test_near_ties_fool_bf16():
    """The adversarial data really is adversarial: pairs that bf16 first-pass scores rank the wrong way round."""
    q, p = near_ties(4, 12, seed=1), near_ties(600, 12, seed=2)
    c, s_hat = exact(q, p), (q.bfloat16() @ p.bfloat16().T).float()
    assert ((s_hat[:, :, None] < s_hat[:, None, :]) & (c[:, :, None] > c[:, None, :])).any()
    assert (p[2::3] == p[1::3][:len(p[2::3])]).all()


def test_threshold_path_with_real_thresholds_and_ties():
    """Enough passages for thresholds to reject most groups, ties at the k-th place, several query blocks, partial
    last groups, the largest passages last."""
    for data in (integer, dyadic, gaussian, near_ties):
        q, p = data(10, 4, seed=3), data(5003, 4, seed=4)
        p[-50:] *= 3
        bs, bi = brute(q, p, 25)
        for precision in ("fp32", "bf16"):
            for kw in [dict(q_block=3, p_block=64), dict(p_block=400, group=8), dict(p_block=800, group=4)]:
                s, i = search.topk_threshold(q, p, 25, precision, **kw)
                assert torch.equal(i, bi) and torch.equal(s, bs), (data.__name__, precision, kw)


def test_error_bound_follows_larger_passages():
    """The last passages 1000x larger and nearly orthogonal to the queries: their bf16 errors, about 2^-9 |q| |p|,
    dwarf the gaps between their scores (which still top every small passage's), so a bound from the small passages'
    norms would drop some of the top k."""
    g = torch.Generator().manual_seed(10)
    q, small = torch.randn(3, 16, generator=g), torch.randn(2000, 16, generator=g)
    v = torch.randn(16, generator=g)
    v -= torch.linalg.lstsq(q.T, v[:, None]).solution[:, 0] @ q                   # v orthogonal to every query
    w = q.sum(0) / q.sum(0).norm()
    big = 1000 * (v / v.norm() + (0.01 + torch.rand(400, 1, generator=g) * 1e-3) * w)
    p = torch.cat([small, big])
    bs, bi = brute(q, p, 30)
    s_hat = (q.bfloat16() @ big.bfloat16().T).float()
    order = exact(q, big).argsort(1, descending=True)
    assert (s_hat.gather(1, order).diff(1) > 0).any()                              # bf16 ranks them wrongly
    for kw in [dict(p_block=100), dict(p_block=7, group=1)]:
        s, i = search.topk_threshold(q, p, 30, "bf16", **kw)
        assert torch.equal(i, bi) and torch.equal(s, bs), kw


def test_massive_ties_are_compacted(monkeypatch):
    """9 distinct rows among 20000: almost every passage ties within the bound, so the kept candidates outgrow
    32 Qb k and are cut to the exact top k so far (_exact_top) along the way; the result stays exact."""
    calls = []
    real = search._exact_top
    monkeypatch.setattr(search, "_exact_top", lambda *a: calls.append(1) or real(*a))
    q, p = integer(8, 2, seed=1), integer(20000, 2, seed=2)
    bs, bi = brute(q, p, 2)
    for precision in ("fp32", "bf16"):
        calls.clear()
        s, i = search.topk_threshold(q, p, 2, precision, p_block=512)
        assert torch.equal(i, bi) and torch.equal(s, bs) and len(calls) > 1


def test_results_do_not_depend_on_threads_or_blocks():
    """d = 1024: MKL's float32 matmul gives other last bits for other shapes and thread counts; the returned
    scores, exact, do not."""
    q, p = gaussian(5, 1024, seed=6), gaussian(300, 1024, seed=7)
    ref = search.exact_topk(q, p, 30)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for kw in [dict(), dict(p_block=48), dict(q_block=2, p_block=16), dict(precision="bf16", p_block=32)]:
            s, i = search.exact_topk(q, p, 30, **kw)
            assert torch.equal(s, ref[0]) and torch.equal(i, ref[1]), kw
    finally:
        torch.set_num_threads(n)


# ---------------------------------------------------------------- hostile inputs
def faint_signal(seed, gap, big, n=400):
    """Passages of norm ~big nearly orthogonal to the queries, whose scores (~0.01 big) differ by about gap big: the
    first pass's errors, ~2^-24 or 2^-9 of |q| |p|, rank them wrongly, and only a right error bound keeps them."""
    g = torch.Generator().manual_seed(seed)
    q, v = torch.randn(3, 16, generator=g), torch.randn(16, generator=g)
    v -= torch.linalg.lstsq(q.T, v[:, None]).solution[:, 0] @ q
    w = q.sum(0) / q.sum(0).norm()
    return q, big * (v / v.norm() + (0.01 + torch.rand(n, 1, generator=g) * gap) * w)


@pytest.mark.parametrize("precision,gap,big", [("fp32", 1e-7, 1e5), ("bf16", 1e-3, 1e3)])
def test_tiny_and_huge_norms(precision, gap, big):
    """Queries scaled by 2^-80 (float32 squares of their entries underflow to 0: a norm bound of 0 voided the error
    bound and the top k came out wrong) or 2^70 with passages by 2^-70 (squares overflow: a false 'not finite'
    error), and entries near float32's largest (bf16 would round them to inf: the first pass falls back to fp32)."""
    q, p = faint_signal(10, gap, big)
    for qs, ps in [(2.0 ** -80, 1.0), (1.0, 2.0 ** -80), (2.0 ** 70, 2.0 ** -70), (2.0 ** -70, 2.0 ** 70)]:
        for k in (1, 30):
            s, i = search.topk_threshold(q * qs, p * ps, k, precision)
            bs, bi = brute(q * qs, p * ps, k)
            assert torch.equal(i, bi) and torch.equal(s, bs), (qs, ps, k)
    q = torch.tensor([[1.999, -1.999, 1.0, 0.0], [1.999, 1.999, -1.999, 1.0]]) * 2.0 ** 127
    p = gaussian(30, 4, seed=3) * 2.0 ** -40
    s, i = search.topk_threshold(q, p, 7, precision)
    bs, bi = brute(q, p, 7)
    assert torch.equal(i, bi) and torch.equal(s, bs)


def test_norm_bound_under_and_overflow():
    x = torch.tensor([[2.0 ** -80] * 8, [2.0 ** 70] * 8, [0.0] * 8, [3.0, -4.0] + [0.0] * 6, [2.0 ** -140] * 8])
    n = search._norm_bound(x).tolist()
    want = [8 ** 0.5 * 2.0 ** -80, 8 ** 0.5 * 2.0 ** 70, 0.0, 5.0, 8 ** 0.5 * 2.0 ** -140]
    assert all(w <= b <= w * (1 + 1e-5) for w, b in zip(want, n)), n


def pair_scores(q, p, qi, pi, **kw):
    """_row_scores with one pair a row: the correctly rounded q[qi] . p[pi] [P]."""
    return search._row_scores(q[qi], p, pi[:, None], **kw)[:, 0]


def test_pair_scores_tiny_vectors_round_correctly():
    """Hand-worked: a = 2^-53 (1 + 2^-17), c = -2^-52 (1 + 2^-16); 1 + 2^-24 + a + a + c = 1 + 2^-24 - 2^-69 lies
    below the midpoint 1 + 2^-24, so it rounds to 1, but a float64 sum from the left rounds up to 1 + 2^-24 + 2^-52.
    Scaled by 2^-100 the float32 norm of p is 0, which made the check that catches this accept the float64 sum."""
    a, c = 2.0 ** -53 * (1 + 2.0 ** -17), -(2.0 ** -52) * (1 + 2.0 ** -16)
    q = torch.tensor([[1.0, 2.0 ** -24, a, a, c]])
    for scale in (1.0, 2.0 ** -100):
        p = torch.full((1, 5), scale)
        assert pair_scores(q, p, torch.tensor([0]), torch.tensor([0])).item() == scale
        assert float(fraction_f32(q[0], p[0])) == scale


def test_one_tied_query_keeps_memory_bounded(monkeypatch):
    """A zero query ties every passage at 0 (all are candidates) while the others keep about k: _exact_top pads
    every row to the longest, so the cut to the exact top k must be per query (with the whole block's count,
    32 Qb k, one such query among 1024 made a [1024, N] layout). The columns stay under 32 k plus one block."""
    cols = []
    real = search._by_row
    monkeypatch.setattr(search, "_by_row", lambda row, R: cols.append(int(row.bincount().max())) or real(row, R))
    q, p = gaussian(32, 4, seed=1), gaussian(3000, 4, seed=2)
    q[5], q[9] = 0.0, -0.0
    bs, bi = brute(q, p, 2)
    assert bi[5].tolist() == [0, 1] and bs[5].eq(0).all()
    for precision in ("fp32", "bf16"):
        cols.clear()
        s, i = search.topk_threshold(q, p, 2, precision, p_block=64)
        assert torch.equal(i, bi) and torch.equal(s, bs) and 64 < max(cols) <= 32 * 2 + 64, (precision, max(cols))


def test_all_passages_equal():
    """Every passage the same row: every query ties all N (positive, negative and zero scores); the lowest rows win."""
    q = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [0.0, 0.0], [2.0, -1.0], [1e-30, 1e-30]])
    p = torch.tensor([[0.5, 0.25]]).repeat(2000, 1)
    for precision in ("fp32", "bf16"):
        for kw in [dict(p_block=33, group=5), dict()]:
            s, i = search.topk_threshold(q, p, 3, precision, **kw)
            assert i.tolist() == [[0, 1, 2]] * 5 and torch.equal(s, exact(q, p)[:, :3]), (precision, kw)


def test_mixed_signs_zeros_denormals_in_one_block():
    """One query block with a query of positive scores (bits path possible), one of negative ones, a zero query,
    one of signed zeros and denormals (scores in float32's subnormal range), duplicated passages."""
    g = torch.Generator().manual_seed(21)
    p = torch.randn(500, 6, generator=g).abs()
    p[100:200] = p[:100]                                           # duplicates: the lower rows win ties
    p[300:310] = 0.0
    q = torch.stack([torch.ones(6), -torch.ones(6), torch.zeros(6), -torch.zeros(6),
                     torch.randn(6, generator=g) * 2.0 ** -135, torch.randn(6, generator=g)])
    bs, bi = brute(q, p, 40)
    assert (bs[4] != 0).any() and (bs[4].abs() < torch.finfo(torch.float32).tiny).any()
    for precision in ("fp32", "bf16"):
        for kw in [dict(), dict(p_block=50, group=4), dict(q_block=1)]:
            s, i = search.topk_threshold(q, p, 40, precision, **kw)
            assert torch.equal(i, bi) and torch.equal(s, bs), (precision, kw)


def sweep_data(kind, n, d, seed, side):
    """Data for the random sweep; side 0: queries, 1: passages."""
    g = torch.Generator().manual_seed(seed)
    if kind == "opposed":
        return opposed(n, d, 2 * seed + 1 - side)
    if kind == "mixed":                                            # rows of either sign, some zero
        return gaussian(n, d, seed) * torch.randint(-1, 2, (n, 1), generator=g)
    if kind == "duplicates":                                       # 3 distinct rows: ties everywhere
        return integer(3, d, seed)[torch.randint(0, 3, (n,), generator=g)]
    if kind == "scaled":                                           # |q| ~ 2^-70, |p| ~ 2^10, times 2^[-10, 10]
        return gaussian(n, d, seed) * 2.0 ** (side * 80 - 70 + int(torch.randint(-10, 11, (), generator=g)))
    if kind == "denormal":                                         # queries in float32's subnormal range
        return gaussian(n, d, seed) * 2.0 ** -135 if side == 0 else gaussian(n, d, seed)
    return {"dyadic": dyadic, "integer": integer, "gaussian": gaussian, "near_ties": near_ties}[kind](n, d, seed)


def test_random_shapes_and_blocks_equal_brute_force():
    """30 seeded random configurations: shapes (N < G, k = N, Q = 1, N not a multiple of anything), group and block
    sizes, data kinds; both precisions, against the brute-force sort."""
    kinds = ["dyadic", "integer", "gaussian", "near_ties", "opposed", "mixed", "duplicates", "scaled", "denormal"]
    rng = random.Random(22)
    for t in range(30):
        Q, N, d = rng.randint(1, 6), rng.choice([1, 2, 5, rng.randint(1, 150)]), rng.randint(1, 8)
        k = rng.choice([1, N, rng.randint(1, N)])
        kind = kinds[t % len(kinds)]
        q, p = sweep_data(kind, Q, d, 2 * t, 0), sweep_data(kind, N, d, 2 * t + 1, 1)
        kw = dict(group=rng.choice([1, 2, 3, 16, 40]), p_block=rng.choice([None, 1, 2, 7, rng.randint(1, 60)]),
                  q_block=rng.choice([None, 1, 2, 4]))
        bs, bi = brute(q, p, k)
        for precision in ("fp32", "bf16"):
            s, i = search.topk_threshold(q, p, k, precision, **kw)
            assert torch.equal(i, bi) and torch.equal(s, bs), (t, kind, Q, N, d, k, kw, precision)


# ---------------------------------------------------------------- exact scores and bounds
def fraction_f32(a, b):
    """The correctly rounded float32 of a . b through Python fractions and numpy (a slow, separate reference)."""
    x = sum(Fraction(u) * Fraction(v) for u, v in zip(a.tolist(), b.tolist()))
    lo = np.float32(float(x))
    cands = [np.nextafter(lo, np.float32(-np.inf)), lo, np.nextafter(lo, np.float32(np.inf))]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - x), int(np.array(c).view(np.int32)) & 1))


def test_pair_scores_round_correctly():
    # hand-worked: 1 + 2^-24 lies half-way between 1 and 1 + 2^-23 (ties to even: 1); 2^-80 more tips it over,
    # though a float64 sum cannot see it (1 + 2^-24 + 2^-80 needs 81 bits); likewise for negative scores
    q = torch.tensor([[1.0, 2.0 ** -24, 2.0 ** -80], [-1.0, -(2.0 ** -24), -(2.0 ** -80)]])
    p = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    s = pair_scores(q, p, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]))
    assert s.tolist() == [1.0, 1 + 2.0 ** -23, -1.0, -(1 + 2.0 ** -23)]
    # random pairs with mixed magnitudes against fractions, in any order of pairs
    g = torch.Generator().manual_seed(8)
    q = torch.randn(7, 6, generator=g) * 2.0 ** torch.randint(-30, 30, (7, 6), generator=g)
    p = torch.randn(40, 6, generator=g) * 2.0 ** torch.randint(-30, 30, (40, 6), generator=g)
    qi, pi = torch.randint(0, 7, (300,), generator=g), torch.randint(0, 40, (300,), generator=g)
    s = pair_scores(q, p, qi, pi, chunk=64)
    assert s.tolist() == [float(fraction_f32(q[a], p[b])) for a, b in zip(qi.tolist(), pi.tolist())]
    assert pair_scores(q, p, qi[:0], pi[:0]).shape == (0,)
    # rows of passages as _exact_top asks: norm bounds given, only the first n[r] columns (n descending), small chunks
    ids, n = pi[:63].view(7, 9), torch.tensor([9, 9, 7, 4, 4, 1, 0])
    s = search._row_scores(q, p, ids, search._norm_bound(p), n, chunk=6 * 9)
    for r in range(7):
        assert s[r, :n[r]].tolist() == [float(fraction_f32(q[r], p[b])) for b in ids[r, :n[r]].tolist()]


def test_pair_scores_settle_orthogonal_pairs_without_fractions(monkeypatch):
    """Exact zeros (disjoint supports) are settled by the sum |q_i p_i| = 0 bound, not the slow exact sum."""
    monkeypatch.setattr(search, "_f32_nearest", lambda a, b: pytest.fail("slow path used"))
    q, p = torch.eye(64)[:10] * 3, torch.eye(64)
    s = pair_scores(q, p, torch.arange(10).repeat_interleave(64), torch.arange(64).repeat(10))
    assert s.view(10, 64).equal(torch.eye(64)[:10] * 3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_first_pass_error_bound_holds(precision):
    """|s_hat - c| <= A + B |s_hat| for the matmul torch actually runs: bf16 products summed in float32 (a bf16
    accumulator would break it at d = 4096 with all-positive terms), mixed magnitudes, small and large shapes."""
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(9)
    for d, positive in [(4096, True), (4096, False), (130, False), (7, True)]:
        q = torch.randn(9, d, generator=g) * 2.0 ** torch.randint(-6, 6, (9, 1), generator=g)
        p = torch.randn(200, d, generator=g) * 2.0 ** torch.randint(-6, 6, (200, 1), generator=g)
        if positive:
            q, p = q.abs(), p.abs()
        qn, pmax = search._norm_bound(q), float(search._norm_bound(p).max())
        A, B = search._error_bound(q, q.to(dt), qn, pmax, precision)
        s_hat = torch.empty(200, 9, dtype=dt)
        search._matmul(p.to(dt), q.to(dt), out=s_hat)
        s_hat, c = s_hat.double().T, exact(q, p).double()
        assert ((s_hat - c).abs() <= A[:, None] + B * s_hat.abs()).all()
        if precision == "bf16":  # and it is not absurdly loose (float32's random-signed errors stay far below)
            assert ((s_hat - c).abs() > (A[:, None] + B * s_hat.abs()) / 64).any()


def test_threshold_hand_worked():
    """k passages at s_hat >= R = 10 with |s_hat - c| <= A = 1: the k-th best c is >= 9, so s_hat >= 8 is needed;
    with R an exact score (exact=True), s_hat >= 9. With B = 1/4, R = 10: lo = 10 - 1 - 2.5 = 6.5, s_hat + |s_hat|/4
    >= 5.5: s_hat >= 4.4; R = -10: y = -10 - 1 - 2.5 - 1 = -14.5 < 0, s_hat (1 - B) >= y: s_hat >= -14.5 / 0.75.
    R = -inf stays -inf."""
    R, A = torch.tensor([10.0, -10.0, -math.inf]), torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    t = search._threshold(R, A, 0.0, torch.float32).tolist()
    assert 8 - 1e-5 < t[0] <= 8 and -12 - 1e-5 < t[1] <= -12 and t[2] == -math.inf
    assert 9 - 1e-5 < search._threshold(R, A, 0.0, torch.float32, exact=True)[0].item() <= 9
    t = search._threshold(R, A, 0.25, torch.float32).tolist()
    assert 4.4 - 1e-5 < t[0] <= 4.4 and -14.5 / 0.75 - 1e-5 < t[1] <= -14.5 / 0.75
    b = search._threshold(torch.tensor([10.0]), A[:1], 0.0, torch.bfloat16)   # rounded down to bf16: 8 is exact,
    assert b.dtype == torch.bfloat16 and b.item() <= 8 and b.item() >= 7.9      # the slack takes it one step below


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_bits_order_like_values_above_a_positive_threshold(dtype):
    """x >= t exactly when _bits(x) >= _bits(t), for t > 0 and any x: signed zeros, denormals, infinities, values
    one step either side of t; and the maximum of bits, where >= 0, is the bits of the maximum."""
    tiny = torch.finfo(dtype).tiny
    g = torch.Generator().manual_seed(12)
    x = torch.cat([torch.randn(4000, generator=g) * 10.0 ** torch.randint(-40, 38, (4000,), generator=g),
                   torch.tensor([0.0, -0.0, tiny / 4, -tiny / 4, math.inf, -math.inf, 1.0, -1.0])]).to(dtype)
    t = torch.cat([x[x > 0][:50], torch.tensor([tiny / 8, 1.0]).to(dtype)])
    x = torch.cat([x, torch.nextafter(t, torch.full_like(t, math.inf)), torch.nextafter(t, torch.zeros_like(t))])
    assert ((x[:, None] >= t) == (search._bits(x)[:, None] >= search._bits(t))).all()
    x = x[:len(x) // 7 * 7].view(-1, 7)
    m, ref = search._bits(x).amax(1), x.amax(1)
    assert torch.equal(search._floats(m[m >= 0]), ref[m >= 0]) and (ref[m < 0] <= 0).all()


@pytest.mark.parametrize("ints", [True, False])
def test_kth_super_max_brute_force(ints):
    """Pass 1's bound against a slow reference: the k-th largest, over super-groups h (groups g = h mod H), of the
    maximum score; and at least k passages score at least that."""
    g = torch.Generator().manual_seed(13)
    N, Qb, G, H, k, pb = 1003, 6, 4, 37, 20, 40
    s_all = torch.randn(N, Qb, generator=g).bfloat16()
    s_all[:, 0] -= 8                                                    # a query whose k-th maximum is negative
    blocks = [(b, torch.cat([s_all[b:b + pb], torch.full((-(-min(pb, N - b) // G) * G - min(pb, N - b), Qb),
                                                            -math.inf, dtype=torch.bfloat16)]))
              for b in range(0, N, pb)]
    m = torch.empty(pb // G, Qb, dtype=torch.int16 if ints else torch.bfloat16)
    R = search._kth_super_max(iter(blocks), G, k, H, ints, m)
    f = s_all.float()
    ref = torch.stack([torch.stack([f[torch.arange(N) // G % H == h, j].max() for h in range(H)]).sort(
        descending=True).values[k - 1] for j in range(Qb)])
    if ints:
        ref = torch.where(ref >= 0, ref, -math.inf)
    assert torch.equal(R, ref) and ((f >= R).sum(0) >= k).all()


def faint(n, d, seed):
    """Every score positive but far below the error bound: passages 100 e_0 plus small positive entries, queries
    (odd seeds) small positive entries off e_0. Pass 1's maxima (bits) give R >= 0, yet the thresholds are < 0."""
    x = gaussian(n, d, seed).abs() / 8
    x[:, 0] = 0.0 if seed % 2 else 100.0
    return x


def test_both_maxima_paths_are_taken(monkeypatch):
    """Positive thresholds take the maxima of bits; every score negative: pass 1 again with values; positive scores
    with thresholds <= 0: pass 2 takes the maxima of values. All exact."""
    seen = []
    real = search._group_max
    monkeypatch.setattr(search, "_group_max", lambda s, G, ints, out: seen.append(ints) or real(s, G, ints, out))
    for data, want in ((gaussian, [True]), (opposed, [True, False]), (faint, [True, False])):
        seen.clear()
        q, p = data(5, 8, seed=1), data(3000, 8, seed=2)
        s, i = search.topk_threshold(q, p, 10, "bf16", p_block=256)
        bs, bi = brute(q, p, 10)
        assert torch.equal(i, bi) and torch.equal(s, bs) and sorted(set(seen), reverse=True) == want


def test_auto_precision(monkeypatch):
    seen = []
    real = search.topk_threshold
    monkeypatch.setattr(search, "topk_threshold", lambda q, p, k, precision, *a: seen.append(precision) or real(
        q, p, k, precision, *a))
    q, p = gaussian(64, 8, seed=1), gaussian(64 * 3, 8, seed=2)
    monkeypatch.setattr(search, "_bf16_is_fast", lambda device: True)
    search.exact_topk(q, p, 3), search.exact_topk(q[:63], p, 3), search.exact_topk(q, p, 4)
    monkeypatch.setattr(search, "_bf16_is_fast", lambda device: False)
    search.exact_topk(q, p, 3)
    assert seen == ["bf16", "fp32", "fp32", "fp32"]  # bf16 only with >= 64 queries, >= 64 k passages, fast bf16


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
    with pytest.raises(ValueError, match="precision 'fp16'"):
        search.exact_topk(q, p, 2, precision="fp16")
    for bad in (math.nan, math.inf, 1e30):
        with pytest.raises(ValueError, match="finite"):
            search.exact_topk(q + 1, p.index_fill(0, torch.tensor([3]), bad), 2)
    for kw in (dict(p_block=-100), dict(q_block=0)):
        with pytest.raises(ValueError, match=f"{next(iter(kw))} = .* must be at least 1"):
            search.exact_topk(q, p, 2, **kw)
    with pytest.raises(ValueError, match="group = 0 must be at least 1"):
        search.topk_threshold(q, p, 2, group=0)


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
    bm = bm25.BM25(docs, k1, b)
    assert torch.allclose(bm.scores(queries), ref, rtol=1e-12, atol=1e-12)
    for k, block in [(len(docs), 1 << 21), (10, 50)]:  # all passages; and many small query blocks
        s, i = bm.search(queries, k, postings_per_block=block)
        bs, bi = ref.float().sort(dim=1, descending=True, stable=True)
        assert torch.equal(i, bi[:, :k]) and torch.equal(s, bs[:, :k])


def test_bm25_zero_scores_follow_in_id_order_and_empty_query():
    docs = [[1, 2], [3], [1], [4, 4], []]
    s, i = bm25.BM25(docs).search([[3], []], 5)
    assert i[0].tolist() == [1, 0, 2, 3, 4] and s[0, 0] > 0 and s[0, 1:].eq(0).all()
    assert i[1].tolist() == [0, 1, 2, 3, 4] and s[1].eq(0).all()


def test_bm25_repeated_query_token_counts_twice():
    bm = bm25.BM25([[1, 2, 2], [2, 3], [4]])
    once, twice = bm.scores([[2]]), bm.scores([[2, 2]])
    assert torch.allclose(twice, 2 * once) and once[0, 0] > 0


def test_bm25_errors():
    with pytest.raises(ValueError, match="no documents"):
        bm25.BM25([])
    with pytest.raises(ValueError, match="negative"):
        bm25.BM25([[1, -2]])
    bm = bm25.BM25([[1], [2]])
    with pytest.raises(ValueError, match="k = 3"):
        bm.search([[1]], 3)


# ---------------------------------------------------------------- the CLI
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
    assert search.main(argv[:-1] + [str(tmp_path / "bf16.trec"), "--precision", "bf16"]) == 0
    assert (tmp_path / "bf16.trec").read_text() == out.read_text()  # the same run, byte for byte


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
