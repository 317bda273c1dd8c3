"""Exact dense retrieval for evaluation and hard negatives: maximum inner product top-k, TREC run files (BM25, the
lexical retriever, is bm25.py, on this file's select_topk).

    scores, ids = exact_topk(q, p, k=100)            # q [Q, d], p [N, d] float32, CPU or CUDA -> [Q, k], [Q, k]
    write_trec("run.trec", qids, pids, scores, ids, tag="de")

    python search.py --queries Q.npy --passages P.npy --qids qids.txt --pids pids.txt --k 100 --out run.trec

Every top-k here is exact and deterministic: rows sorted by score descending, ties broken by the lower passage row
first (the order of sorting on (-score, id)). Dense scores are exact too: each is the float32 nearest the exact
inner product (pair_scores), so results do not depend on block sizes, thread counts, the first pass's precision or
the device. (A float32 matmul's last bits do: MKL picks its kernel by shape, e.g. for d = 1024 on 2 threads.)

Dense search (topk_threshold) walks the passages block by block, never holding a Q x N score matrix:
- a first pass, one float32 or bfloat16 matmul per block into a reused buffer, finds candidates: each query's
  running k-th best is a threshold, maxima over groups of G passages are compared with it, and only the groups
  that reach it are read again. A proven bound on the first pass's error (_error_bound, _threshold) keeps every
  passage that can still be in the top k;
- pair_scores scores the kept pairs exactly (float64 sums of exact products, checked against the rounding
  boundaries), and the top k is taken from them.
bfloat16 halves the matmul or better on CPUs with AVX512_BF16 or AMX and on GPUs; exact_topk uses it there
(precision='auto'; bench.py search compares with faiss IndexFlatIP). tests/test_search.py checks every path against
a brute-force stable sort of exact scores. (Encoding with a saved dual-encoder
lives in train.py: this file does not import the model.)

Shapes: Q queries, N passages, d dims, k results per query, B passages per block, G passages per group.
"""
import argparse
import math
import os
import sys
import time
from contextlib import contextmanager
from fractions import Fraction
from itertools import chain

import numpy as np
import torch


# ----------------------------------------------------------------------------- tie-exact selection
def select_topk(s, k):
    """The first k columns of each row of s [R, M] in the order (score descending, column ascending).

    -> values [R, k], columns [R, k] (long), each row in that order. torch.topk alone may return any of several
    entries tied at the k-th score; here the lower columns win, so with columns in ascending passage order this is
    the module's tie rule. Scores must not be NaN.
    """
    v = s.topk(k, dim=1).values[:, -1:]                     # k-th largest score of each row    [R, 1]
    keep = s >= v                                           # k entries, more if tied at v      [R, M]
    over = keep.sum(1) - k                                  # [R]
    if over.any():  # ties at the k-th score: of the entries equal to v keep the lowest columns
        r = over.nonzero().squeeze(1)
        tie = s[r] == v[r]                                  # [r, M]
        need = tie.sum(1, keepdim=True) - over[r, None]
        keep[r] = (s[r] > v[r]) | (tie & (tie.cumsum(1, dtype=torch.int32) <= need))
    cols = keep.nonzero()[:, 1]                             # row-major: columns ascending within a row
    if cols.numel() != s.shape[0] * k:
        raise ValueError("select_topk: the scores contain NaN")
    cols = cols.view(-1, k)                                 # [R, k]
    vals, order = s.gather(1, cols).sort(dim=1, descending=True, stable=True)
    return vals, cols.gather(1, order)


def top_of(key, v, Qb, k):
    """The tie-exact top k of each query among pairs key = passage id * Qb + query row with scores v (1-D, not NaN)
    -> (scores [Qb, k], ids [Qb, k]) in the order (score descending, id ascending), padded with -inf / -1 where a
    query has fewer than k pairs. One sort by key (ids ascending within each query), then one stable sort by
    (query, score), the float32 scores through an order-preserving integer image of their bits."""
    o = torch.argsort(key)
    key, v = key[o], v[o] + 0.0                                              # -0.0 -> 0.0: equal scores, equal bits
    b = v.view(torch.int32)
    b = (b ^ ((b >> 31) & 0x7FFFFFFF)).long()                                # increasing with v
    row = key % Qb
    o = torch.argsort(row * (1 << 33) - b, stable=True)                      # query ascending, score descending
    key, v, row = key[o], v[o], row[o]
    counts = torch.bincount(row, minlength=Qb)
    rank = torch.arange(len(key), device=key.device) - (counts.cumsum(0) - counts)[row]
    ok = rank < k
    out_v = torch.full((Qb, k), -math.inf, device=v.device)
    out_i = torch.full((Qb, k), -1, dtype=torch.long, device=v.device)
    out_v[row[ok], rank[ok]], out_i[row[ok], rank[ok]] = v[ok], key[ok] // Qb
    return out_v, out_i


# ----------------------------------------------------------------------------- exact scores
U32, UBF = 2.0 ** -24, 2.0 ** -8  # unit roundoff of float32 and of bfloat16 (round to nearest): |x - fl(x)| <= u |x|


def _f32_nearest(a, b):
    """The float32 nearest the exact inner product of float32 vectors a, b (ties to the even bit pattern), in exact
    integer arithmetic: every float32 is a multiple of 2^-149, so T = sum (a_i 2^149)(b_i 2^149) is an integer and
    the product is T 2^-298. Slow (about 1 us a dimension), for the rare pairs pair_scores cannot settle otherwise."""
    x = Fraction(sum(int(u * 2.0 ** 149) * int(v * 2.0 ** 149) for u, v in zip(a.tolist(), b.tolist())), 2 ** 298)
    f = np.float32(x.numerator / x.denominator)  # correctly rounded to float64, then float32: within one step
    near = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    return float(min(near, key=lambda c: (abs(Fraction(float(c)) - x), int(np.array(c).view(np.int32)) & 1)))


def pair_scores(q, p, qi, pi, chunk=1 << 20):
    """Correctly rounded inner products: q [Q, d], p [N, d] float32, qi, pi [P] rows -> [P] float32, the float32
    nearest the exact real q[qi] . p[pi] (ties to even). Every path of this module returns these scores.

    Why exact: a product of two float32 is exact in float64 (24 + 24 significant bits <= 53), so a float64 sum s64 of
    the d products, in whatever order the kernel adds them, is within gamma_{d-1} sum |q_i p_i| of the exact sum,
    gamma_n = n 2^-53 / (1 - n 2^-53) (Higham, Accuracy and Stability of Numerical Algorithms, 2002, eq. 4.4), less
    than g = 2 d 2^-53 sum |q_i p_i| <= 2 d 2^-53 |q| |p| (Cauchy-Schwarz). Rounding s64 to float32 gives r; if neither
    midpoint between r and its float32 neighbours lies within g of s64, the exact sum rounds to r as well. Pairs
    where one does under the |q| |p| bound are checked again with sum |q_i p_i| (0 for orthogonal supports), and the
    few left (exact half-way cases; about d / 2^29 of random pairs) are summed exactly (_f32_nearest).
    Pairs are grouped by query: one batched float64 matrix-vector product per chunk of queries. Assumes denormals are
    not flushed to zero (torch.set_flush_denormal(False), the default).
    """
    out = torch.empty(len(qi), device=q.device)
    if not len(qi):
        return out
    d = q.shape[1]
    order = torch.argsort(qi, stable=True)                                   # pairs grouped by query
    qs, ps = qi[order], pi[order]
    counts = torch.bincount(qs, minlength=len(q))
    rows = counts.nonzero().flatten()                                        # queries with pairs   [R]
    c = counts[rows]
    start = c.cumsum(0) - c                                                  # their first pair in qs, ps
    step = max(1, chunk // (int(c.max()) * max(1, d)))
    for a in range(0, len(rows), step):
        r, cr = rows[a:a + step], c[a:a + step]
        col = torch.arange(int(cr.max()), device=q.device)
        pos = start[a:a + step, None] + torch.minimum(col, cr[:, None] - 1)  # [R, C], short rows repeat a pair
        x = p.index_select(0, ps[pos].flatten()).view(*pos.shape, d)         # [R, C, d]
        y = q[r].double()                                                    # [R, d]
        s = torch.bmm(x.double(), y[:, :, None])[:, :, 0]                    # [R, C] float64 sums
        f = s.float()
        lo = (f.double() + torch.nextafter(f, torch.full_like(f, -math.inf)).double()) / 2  # exact in float64
        hi = (f.double() + torch.nextafter(f, torch.full_like(f, math.inf)).double()) / 2
        g = _norm_bound(x.flatten(0, 1)).view(pos.shape) * _norm_bound(q[r])[:, None] * (2 * d * 2.0 ** -53)
        i, j = ((s - g <= lo) | (s + g >= hi)).nonzero(as_tuple=True)
        if len(i):  # again with sum |q_i p_i|, then exactly
            g = (x[i, j].double().abs() * y[i].abs()).sum(1) * (2 * d * 2.0 ** -53 * (1 + 2.0 ** -20))
            for t in ((s[i, j] - g <= lo[i, j]) | (s[i, j] + g >= hi[i, j])).nonzero().flatten().tolist():
                f[i[t], j[t]] = _f32_nearest(q[r[i[t]]], x[i[t], j[t]])
        valid = col < cr[:, None]
        out[order[pos[valid]]] = f[valid]
    return out


# ----------------------------------------------------------------------------- first-pass error bounds
def _norm_bound(x):
    """Upper bounds of the rows' Euclidean norms [R] float64 (the float32 norm, raised past its rounding error)."""
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).double() * (1 + (x.shape[1] + 4) * 2.0 ** -23)


def _fp32_matmul_is_ieee(device):
    """False when torch may run float32 matmuls with rounded inputs (TF32 on CUDA, bf16 in oneDNN)."""
    backend = torch.backends.cuda.matmul if device.type == "cuda" else getattr(torch.backends.mkldnn, "matmul", None)
    flag = getattr(backend, "fp32_precision", None)
    return flag in ("none", "ieee") if flag is not None else torch.get_float32_matmul_precision() == "highest"


def _error_bound(qa, ql, qn, pmax, precision):
    """(A [Qb] float64, B): |s_hat - c| <= A + B |s_hat| for every passage p with |p| <= pmax, where s_hat is the
    first pass's score of q . p and c the returned one (pair_scores). With s the exact q . p and |q| <= qn [Qb]:
      c:      |c - s| <= U32 |s| <= U32 qn pmax                                           (one rounding of s)
      fp32:   |s_hat - s| <= gamma sum |q_i p_i| <= gamma qn pmax (Cauchy-Schwarz), gamma = 2d U32 / (1 - 2d U32):
              twice the bound for any summation order of d products, with FMA or without (Higham eq. 3.5); B = 0.
      bf16:   q~ = bf16(q), p~ = bf16(p), |p~_i - p_i| <= UBF |p_i|, so |p~ - p| <= UBF |p|, |p~| <= (1 + UBF) |p|;
              q~.p~ - q.p = (q~ - q).p~ + q.(p~ - p), so |q~.p~ - q.p| <= |q~ - q| (1 + UBF) pmax + qn UBF pmax
              (|q~ - q| measured: about 0.42 UBF |q| on random data).
              The kernel sums the exact products q~_i p~_i in float32 (oneDNN with AVX512_BF16 or AMX, cuBLAS:
              float32 accumulators; tests/test_search.py checks the bound on the machine it runs on): acc is within
              gamma (1 + UBF)^2 qn pmax of q~.p~; then rounded to bf16, |s_hat - acc| <= UBF |acc| <= B |s_hat|,
              B = UBF / (1 - UBF).
      fp32 matmuls allowed rounded inputs (TF32, bf16; _fp32_matmul_is_ieee): as bf16, |q~ - q| <= UBF qn, B = 0.
    Plus eta = d 2^-120 (1 + qn)(1 + pmax) for denormals flushed to zero, far above what they can cost."""
    gamma = 2 * qa.shape[1] * U32 / (1 - 2 * qa.shape[1] * U32)
    eta = qa.shape[1] * 2.0 ** -120 * (1 + qn) * (1 + pmax)
    if precision == "fp32" and _fp32_matmul_is_ieee(qa.device):
        return (gamma + U32) * qn * pmax + eta, 0.0
    eq = _norm_bound(qa - ql.float()) if precision == "bf16" else UBF * qn  # |q~ - q| (q~ - q exact: Sterbenz)
    A = eq * (1 + UBF) * pmax + qn * UBF * pmax + (gamma * (1 + UBF) ** 2 + U32) * qn * pmax + eta
    return A, (UBF / (1 - UBF) if precision == "bf16" else 0.0)


def _threshold(R, A, B, dtype, exact=False):
    """The lowest first-pass score s_hat [Qb] a passage can have and still be in a query's top k, given k passages
    with s_hat >= R [Qb]; as dtype, rounded down. With |s_hat - c| <= A + B |s_hat| (_error_bound):
      those k have c >= R - A - B |R| = lo, so the k-th best c is >= lo; a top-k passage has c >= lo and
      c <= s_hat + A + B |s_hat|, so s_hat + B |s_hat| >= lo - A = y, i.e. s_hat >= y / (1 + B) (y >= 0) or
      y / (1 - B) (y < 0).
    exact=True: R is a k-th best exact score c itself, so lo = R. A float64 slack of 2^-40 (|R| + A) covers the
    rounding of these few operations. R = -inf gives -inf."""
    R = R.double()
    y = (R if exact else R - A - B * R.abs()) - A
    t = torch.where(y >= 0, y / (1 + B), y / (1 - B)) - 2.0 ** -40 * (R.abs() + A)
    out = torch.where(R == -math.inf, R, t).to(dtype)                       # (B * inf would be NaN)
    return torch.where(out.double() > t, torch.nextafter(out, torch.full_like(out, -math.inf)), out)


# ----------------------------------------------------------------------------- dense exact top-k
def _check(q, p, k):
    if q.dim() != 2 or p.dim() != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"exact_topk: need q [Q, d] and p [N, d], got {tuple(q.shape)} and {tuple(p.shape)}")
    if q.dtype != torch.float32 or p.dtype != torch.float32:
        raise ValueError(f"exact_topk: need float32 tensors, got {q.dtype} and {p.dtype}")
    if q.device != p.device:
        raise ValueError(f"exact_topk: q is on {q.device} but p on {p.device}")
    if not 1 <= k <= len(p):
        raise ValueError(f"exact_topk: k = {k} must be in 1..N = {len(p)} (pass min(k, N))")


def _matmul(p_block, ql, out):
    """out [B, Qb] = p_block [B, d] @ ql^T [d, Qb], both float32 or both bf16; on CUDA, bf16 products are summed in
    float32 (no reduced-precision split-k reductions)."""
    if not (p_block.is_cuda and ql.dtype == torch.bfloat16):
        return torch.mm(p_block, ql.T, out=out)
    flags = torch.backends.cuda.matmul
    old, flags.allow_bf16_reduced_precision_reduction = flags.allow_bf16_reduced_precision_reduction, False
    try:
        return torch.mm(p_block, ql.T, out=out)
    finally:
        flags.allow_bf16_reduced_precision_reduction = old


@contextmanager
def _one_thread(device):
    """Run the many small selection ops on one CPU thread: each parallel op waits for its slowest thread, and on
    busy cores that wait, not the arithmetic, decides (2 threads at load 4-6 ran them 5-20x slower than one)."""
    n = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def topk_threshold(q, p, k, precision="fp32", q_block=None, p_block=None, first_block=None, group=16,
                   merge_every=128):
    """Exact top-k in two steps: a first pass (a float32 or bfloat16 matmul) keeps every passage that can still be
    in a query's top k, then _exact_top scores the kept ones exactly and takes the tie-exact top k.

    For each block of queries qa [Qb, d], for each block of B passages (the first one larger, first_block):
      s_hat = p_block @ qa^T in the first pass's precision, into one reused buffer                   [B, Qb]
      m = max of s_hat over groups of G consecutive passages                                          [B/G, Qb]
      the s_hat >= thr of each (group, query) pair with m >= thr are kept as candidates,
    where thr = _threshold(R) and k passages have s_hat >= R: in the first block, R is the k-th largest maximum over
    groups of ~B / (4k) passages (k groups reach it, so k passages do); then the k-th best s_hat of a running top k
    into which candidates are merged once they exceed merge_every * Qb (and after the first and the last block),
    and the kept candidates below the new thr are dropped. Exact: thr never exceeds what a passage of the true top
    k (ties included) must reach, so none is dropped; and the k best s_hat stay. When near-ties keep more than
    32 Qb k candidates, they are cut to the exact top k so far.
    Blocks, measured at 1M x 128, Q = 1000, k = 100 on 2 shared CPU cores (bench.py search): the first block holds
    128 MiB of scores so that R starts near its final value (a running k-th best lets in about k ln(N / B_first)
    passages per query that later fall out); then bf16 blocks of 32 MiB: smaller ones are as fast on one thread,
    but on busy cores each parallel op waits for its slowest thread, and then the number of ops decides.
    Extra memory: the score buffer, one passage block in the first pass's dtype, the candidates, the [Q, k] results.
    """
    _check(q, p, k)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"exact_topk: precision {precision!r} must be 'auto', 'fp32' or 'bf16'")
    N, G, dev = len(p), group, q.device
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    budget = (1 << 30 if q.is_cuda else 1 << 27) // dt.itemsize  # scores in the first block
    qb = max(1, q_block or min(len(q), 1024))
    pb = p_block or min(N, max(256, (budget if q.is_cuda or dt == p.dtype else budget >> 2) // qb))
    pb, first = (-(-min(N, x) // G) * G for x in (pb, first_block or max(pb, budget // qb)))  # multiples of G
    out_s, out_i = torch.empty(len(q), k, device=dev), torch.empty(len(q), k, dtype=torch.long, device=dev)
    pmax = float(_norm_bound(p).max())                                       # bounds every |p|
    for a in range(0, len(q), qb):
        qa = q[a:a + qb]                                                     # [Qb, d]
        Qb, ql, qn = len(qa), qa.to(dt), _norm_bound(qa)
        if not float(qn.max()) * pmax < 2.0 ** 100:  # also catches inf and NaN
            raise ValueError("exact_topk: q and p must be finite, with |q| |p| < 2^100 for every pair")
        A, B = _error_bound(qa, ql, qn, pmax, precision)
        rows = torch.arange(Qb, device=dev)[:, None]
        R = torch.full((Qb,), -math.inf, device=dev)                         # R: k passages have s_hat >= R
        thr = _threshold(R, A, B, dt)
        best_s = torch.full((Qb, k), -math.inf, device=dev)                  # running top k of s_hat  [Qb, k]
        best_i = torch.full((Qb, k), -1, dtype=torch.long, device=dev)
        buf = torch.empty(max(first, pb), Qb, dtype=dt, device=dev)          # [B, Qb] s_hat, reused
        pl = torch.empty(len(buf) if dt != p.dtype else 0, p.shape[1], dtype=dt, device=dev)  # [B, d] in dt
        m = torch.empty(len(buf) // G, Qb, dtype=dt, device=dev)             # [B/G, Qb] group maxima
        over = torch.empty(m.shape, dtype=torch.bool, device=dev)
        kept_k, kept_v = torch.empty(0, dtype=torch.long, device=dev), torch.empty(0, device=dev)  # id * Qb + row
        keys, vals, pending = [], [], 0
        for b in chain([0], range(first, N, pb)):
            n = min(first if b == 0 else pb, N - b)
            ng = -(-n // G)                                                  # groups, the last maybe partial
            pd = p[b:b + n] if dt == p.dtype else pl[:n].copy_(p[b:b + n])   # [B, d]
            s = buf[:ng * G]                                                 # [B, Qb]
            _matmul(pd, ql, out=s[:n])
            if n < ng * G:
                s[n:] = -math.inf                                            # rows past N never win
            torch.amax(s.view(ng, G, Qb), 1, out=m[:ng])
            with _one_thread(dev):
                H = max(1, ng // (4 * k))                                    # groups per super-group
                if b == 0 and ng // H >= k:  # the k-th largest super-group maximum: k passages reach it
                    R = torch.amax(m[:ng // H * H].view(-1, H, Qb), 1).topk(k, dim=0).values[-1].float()
                    thr = _threshold(R, A, B, dt)
                hit = torch.ge(m[:ng], thr, out=over[:ng]).nonzero()         # [h, 2]: group, query
                if len(hit):
                    hg, hq = hit[:, 0], hit[:, 1]
                    v = s.view(ng, G, Qb)[hg, :, hq]                         # [h, G] the hit groups' s_hat
                    j = (v >= thr[hq, None]).nonzero()                       # most of a group stays below
                    keys.append((hg[j[:, 0]] * G + j[:, 1] + b) * Qb + hq[j[:, 0]])
                    vals.append(v[j[:, 0], j[:, 1]].float())
                    pending += len(j)
                if pending and (pending > merge_every * Qb or b == 0 or b + pb >= N):
                    keys, vals = torch.cat(keys), torch.cat(vals)
                    new = vals > best_s[:, -1][keys % Qb]                    # the rest cannot change the top k
                    ok = best_i >= 0
                    best_s, best_i = top_of(torch.cat([(best_i * Qb + rows)[ok], keys[new]]),
                                            torch.cat([best_s[ok], vals[new]]), Qb, k)
                    R = best_s[:, -1].clone()
                    thr = _threshold(R, A, B, dt)
                    kept_k, kept_v = torch.cat([kept_k, keys]), torch.cat([kept_v, vals])
                    ok = kept_v >= thr[kept_k % Qb]
                    kept_k, kept_v, keys, vals, pending = kept_k[ok], kept_v[ok], [], [], 0
                    if len(kept_k) > 32 * Qb * k:  # many near-ties: only the exact top k so far can stay
                        ok = torch.isin(kept_k, _exact_top(qa, p, k, best_i, R, kept_k, kept_v, A, B)[1] * Qb + rows)
                        kept_k, kept_v = kept_k[ok], kept_v[ok]
                        best_s, best_i = top_of(kept_k, kept_v, Qb, k)
                        R = best_s[:, -1].clone()
                        thr = _threshold(R, A, B, dt)
        with _one_thread(dev):
            out_s[a:a + qb], out_i[a:a + qb] = _exact_top(qa, p, k, best_i, R, kept_k, kept_v, A, B)
    return out_s, out_i


def _exact_top(qa, p, k, best_i, R, kept_k, kept_v, A, B):
    """The tie-exact top k (scores, ids [Qb, k]) of the kept pairs (keys id * Qb + row, first-pass scores kept_v)
    by exact score. best_i [Qb, k] is the top k by s_hat, R [Qb] its k-th best s_hat: its exact scores' minimum c_k
    bounds the final k-th best from below, so of the rest only the kept that can reach c_k are scored."""
    Qb = len(qa)
    top = (best_i * Qb + torch.arange(Qb, device=qa.device)[:, None]).flatten()
    c = pair_scores(qa, p, top % Qb, top // Qb)                              # [Qb * k]
    thr = _threshold(c.view(Qb, k).amin(1), A, B, torch.float32, exact=True)
    row = kept_k % Qb
    eq = (kept_v == R[row]).nonzero().flatten()                              # s_hat == R: in top or not
    more = torch.cat([kept_k[(kept_v >= thr[row]) & (kept_v < R[row])],      # s_hat > R: all in top
                      kept_k[eq[~torch.isin(kept_k[eq], top)]]])
    return top_of(torch.cat([top, more]), torch.cat([c, pair_scores(qa, p, more % Qb, more // Qb)]), Qb, k)


def _bf16_is_fast(device):
    """bf16 matmuls run at least as fast as float32 ones: CUDA with bf16, or a CPU with AVX512_BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def exact_topk(q, p, k, precision="auto", q_block=None, p_block=None):
    """Exact maximum inner product top-k: q [Q, d], p [N, d] float32 on one device -> (scores [Q, k] float32,
    ids [Q, k] int64), rows sorted by score descending, ties to the lower passage row. 1 <= k <= N, else ValueError.

    Scores are the correctly rounded float32 of the exact inner products (pair_scores). precision is the first
    pass's: 'fp32', 'bf16' (a fraction of the matmul time on CPUs with AVX512_BF16 or AMX, and on GPUs) or 'auto' =
    bf16 where that is fast and there are at least 64 queries and 64 k passages, else fp32. Every choice returns the
    same tensors; block sizes follow the shapes and the device (q_block, p_block override them).
    """
    _check(q, p, k)
    if precision == "auto":
        big = len(q) >= 64 and len(p) >= 64 * k
        precision = "bf16" if big and _bf16_is_fast(q.device) else "fp32"
    return topk_threshold(q, p, k, precision, q_block, p_block)


# ----------------------------------------------------------------------------- TREC runs
def write_trec(path, qids, pids, scores, ids, tag):
    """Write a TREC run: one line `qid Q0 docid rank score tag` per result, rank from 1 in row order.

    qids: Q query ids; pids: passage row -> id; scores, ids [Q, k] (tensors or arrays, e.g. from exact_topk). Entries
    with id < 0 (padding, such as BM25 zeros masked by the caller) are skipped. Scores are written with 9
    significant digits (float32 round-trips). Written to path + '.tmp', then os.replace: never half-written.
    """
    scores, ids = torch.as_tensor(scores).tolist(), torch.as_tensor(ids).tolist()
    if len(qids) != len(ids) or len(scores) != len(ids):
        raise ValueError(f"write_trec: {len(qids)} qids but scores/ids of {len(scores)}/{len(ids)} rows")
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for qid, row_s, row_i in zip(qids, scores, ids):
                row = [(pids[i], s) for s, i in zip(row_s, row_i) if i >= 0]
                for rank, (pid, s) in enumerate(row, 1):
                    line = f"{qid} Q0 {pid} {rank} {s:.9g} {tag}\n"
                    if len(line.split()) != 6:
                        raise ValueError(f"write_trec: an id or the tag is empty or has whitespace: {line!r}")
                    f.write(line)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------- CLI
class InputError(ValueError):
    """A problem with a CLI input, worded `file:line: problem` (line 0: the file as a whole, as in data.py)."""


def load_embeddings(path):
    """A 2-D float32 .npy array -> tensor [rows, d]."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}:0: cannot read as .npy ({e})") from None
    if x.ndim != 2 or x.dtype != np.float32:
        raise InputError(f"{path}:0: expected a 2-D float32 array, got {x.dtype} of shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError(f"{path}:0: row {int(np.nonzero(~np.isfinite(x).all(1))[0][0])} is not finite")
    return torch.from_numpy(x)


def load_ids(path, n, what):
    """One id a line, exactly n lines, unique, no whitespace inside; path None -> the row numbers '0'..'n-1'."""
    if path is None:
        return [str(i) for i in range(n)]
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}:0: cannot read ({e})") from None
    seen = set()
    for i, line in enumerate(lines, 1):
        if not line or any(c.isspace() for c in line):
            raise InputError(f"{path}:{i}: an id must be non-empty without whitespace, got {line!r}")
        if line in seen:
            raise InputError(f"{path}:{i}: duplicate id {line!r}")
        seen.add(line)
    if len(lines) != n:
        raise InputError(f"{path}:{min(len(lines), n) + 1}: {len(lines)} ids for {n} {what} rows")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", required=True, help="query embeddings, .npy float32 [Q, d]")
    ap.add_argument("--passages", required=True, help="passage embeddings, .npy float32 [N, d]")
    ap.add_argument("--qids", help="query ids, one a line (default: row numbers)")
    ap.add_argument("--pids", help="passage ids, one a line (default: row numbers)")
    ap.add_argument("--k", type=int, default=100, help="results per query (at most N)")
    ap.add_argument("--out", required=True, help="TREC run to write")
    ap.add_argument("--tag", default="dense", help="run tag, the 6th column")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="first pass of the dense search (the results are the same; auto: bf16 where it is fast)")
    args = ap.parse_args(argv)
    if args.threads < 0:
        print(f"error: --threads {args.threads}: must be 0 (torch's default) or more", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        q, p = load_embeddings(args.queries), load_embeddings(args.passages)
        if q.shape[1] != p.shape[1]:
            raise InputError(f"{args.queries}:0: dimension {q.shape[1]} but {args.passages} has {p.shape[1]}")
        qids, pids = load_ids(args.qids, len(q), "query"), load_ids(args.pids, len(p), "passage")
        if not 1 <= args.k <= len(p):
            raise InputError(f"--k {args.k}: must be in 1..{len(p)} (the number of passages)")
        if not args.tag or any(c.isspace() for c in args.tag):
            raise InputError(f"--tag: {args.tag!r} must be non-empty without whitespace")
        print(f"search: {len(q)} queries x {len(p)} passages, d = {q.shape[1]}, k = {args.k}, "
              f"{torch.get_num_threads()} threads, precision {args.precision}", flush=True)
        t0 = time.perf_counter()
        scores, ids = exact_topk(q, p, args.k, args.precision)
        t = time.perf_counter() - t0
        write_trec(args.out, qids, pids, scores, ids, args.tag)
    except (OSError, ValueError) as e:  # InputError and any other bad-input ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"search: {t:.2f} s ({len(q) / max(t, 1e-9):.0f} queries/s); wrote {args.out} ({len(q) * args.k} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
