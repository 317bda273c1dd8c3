"""Exact dense retrieval for evaluation and hard negatives: maximum inner product top-k, and a CLI that writes it as
a TREC run (evaluate.write_trec). BM25, the lexical retriever, is bm25.py, on this file's select_topk.

    scores, ids = exact_topk(q, p, k=100)            # q [Q, d], p [N, d] float32, CPU or CUDA -> [Q, k], [Q, k]

    python search.py --queries Q.npy --passages P.npy --qids qids.txt --pids pids.txt --k 100 --out run.trec

Every top-k here is exact and deterministic: rows sorted by score descending, ties broken by the lower passage row
first (the order of sorting on (-score, id)). Dense scores are exact too: each is the float32 nearest the exact
inner product (_row_scores), so results do not depend on block sizes, thread counts, the first pass's precision or
the device. (A float32 matmul's last bits do: MKL picks its kernel by shape, e.g. for d = 1024 on 2 threads.)

Dense search (topk_threshold) walks the passages block by block, never holding a Q x N score matrix:
- a first pass, one float32 or bfloat16 matmul per block into a reused buffer, goes over the passages twice: once
  for maxima over super-groups of passages, whose k-th largest bounds each query's k-th best score from below,
  and once to keep, through maxima over groups of G passages, every passage that can still reach that bound
  given a proven bound on the first pass's error (_error_bound, _threshold);
- the kept pairs are scored exactly (_row_scores: float64 sums of exact products, checked against the rounding
  boundaries), the k best by first-pass score first, then the rest that can still reach them, and the top k is
  taken from them (_exact_top).
bfloat16 halves the matmul or better on CPUs with AVX512_BF16 or AMX and on GPUs; exact_topk uses it there
(precision='auto'; bench.py search compares with faiss IndexFlatIP). tests/test_search.py checks every path against
a brute-force stable sort of exact scores. (Encoding with a saved dual-encoder lives in train.py: this file does
not import the model.)

Shapes: Q queries, N passages, d dims, k results per query, B passages per block, G passages per group,
H super-groups.
"""
import argparse
import math
import sys
import time
from fractions import Fraction

import numpy as np
import torch

import evaluate


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


# ----------------------------------------------------------------------------- exact scores
U32, UBF = 2.0 ** -24, 2.0 ** -8  # unit roundoff of float32 and of bfloat16 (round to nearest): |x - fl(x)| <= u |x|


def _f32_nearest(a, b):
    """The float32 nearest the exact inner product of float32 vectors a, b (ties to the even bit pattern), in exact
    integer arithmetic: every float32 is a multiple of 2^-149, so T = sum (a_i 2^149)(b_i 2^149) is an integer and
    the product is T 2^-298. Slow (about 1 us a dimension), for the rare pairs _row_scores cannot settle otherwise."""
    x = Fraction(sum(int(u * 2.0 ** 149) * int(v * 2.0 ** 149) for u, v in zip(a.tolist(), b.tolist())), 2 ** 298)
    f = np.float32(x.numerator / x.denominator)  # correctly rounded to float64, then float32: within one step
    near = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    return float(min(near, key=lambda c: (abs(Fraction(float(c)) - x), int(np.array(c).view(np.int32)) & 1)))


def _row_scores(qa, p, ids, pn=None, n=None, chunk=None):
    """Correctly rounded inner products, a row of passages per query: qa [R, d] and p [N, d] float32, ids [R, C] rows
    of p -> [R, C] float32, the float32 nearest the exact real qa[r] . p[ids[r, c]] (ties to even). pn [N]: bounds of
    the passages' norms (_norm_bound(p)); None: computed from the rows gathered. n [R], descending: only the first
    n[r] columns of row r are wanted (the rest are left unset), and each chunk of rows reads as many columns as its
    first row needs. chunk: the most scores x d a chunk reads (default 2^20 on a CPU, 2^26 on a GPU). Every path of
    this module returns these scores.

    Why exact: a product of two float32 is exact in float64 (24 + 24 significant bits <= 53), so a float64 sum s64 of
    the d products, in whatever order the kernel adds them, is within gamma_{d-1} sum |q_i p_i| of the exact sum,
    gamma_n = n 2^-53 / (1 - n 2^-53) (Higham, Accuracy and Stability of Numerical Algorithms, 2002, eq. 4.4), less
    than g = 2 d 2^-53 sum |q_i p_i| <= 2 d 2^-53 |q| |p| (Cauchy-Schwarz). Rounding s64 to float32 gives r; if neither
    midpoint between r and its float32 neighbours lies within g of s64, the exact sum rounds to r as well. Pairs
    where one does under the |q| |p| bound are checked again with sum |q_i p_i| (0 for orthogonal supports), and the
    few left (exact half-way cases; about d / 2^29 of random pairs) are summed exactly (_f32_nearest).
    One batched float64 matrix-vector product per chunk of rows. Assumes denormals are not flushed to zero
    (torch.set_flush_denormal(False), the default).
    """
    R, C = ids.shape
    d = p.shape[1]
    out = torch.empty(R, C, device=p.device)
    qn = _norm_bound(qa)
    chunk = chunk or 1 << (26 if p.is_cuda else 20)
    size = min(R * C * d, max(chunk, C * d))                                 # the largest chunk's rows x d
    xb = torch.empty(size, device=p.device)                                  # reused, not fresh pages a chunk
    xd = torch.empty(size, dtype=torch.float64, device=p.device)             # (2-5 % at 100k x 128)
    a = 0
    while a < R and C:
        w = C if n is None else int(n[a])                                    # columns of this chunk
        if w == 0:
            break
        step = max(1, chunk // (w * d))
        i = ids[a:a + step, :w]                                              # [r, w]
        x = torch.index_select(p, 0, i.flatten(), out=xb[:i.numel() * d].view(-1, d)).view(*i.shape, d)  # [r, w, d]
        y = qa[a:a + step].double()                                          # [r, d]
        s = torch.bmm(xd[:x.numel()].view(x.shape).copy_(x), y[:, :, None])[:, :, 0]  # [r, w] float64 sums
        f = s.float()
        lo = (f.double() + torch.nextafter(f, torch.full_like(f, -math.inf)).double()) / 2  # exact in float64
        hi = (f.double() + torch.nextafter(f, torch.full_like(f, math.inf)).double()) / 2
        xn = pn[i] if pn is not None else _norm_bound(x.flatten(0, 1)).view(i.shape)
        g = xn * qn[a:a + step, None] * (2 * d * 2.0 ** -53)
        u, v = ((s - g <= lo) | (s + g >= hi)).nonzero(as_tuple=True)
        if len(u):  # again with sum |q_i p_i|, then exactly
            g = (x[u, v].double().abs() * y[u].abs()).sum(1) * (2 * d * 2.0 ** -53 * (1 + 2.0 ** -20))
            for t in ((s[u, v] - g <= lo[u, v]) | (s[u, v] + g >= hi[u, v])).nonzero().flatten().tolist():
                f[u[t], v[t]] = _f32_nearest(qa[a + u[t]], x[u[t], v[t]])
        out[a:a + step, :w] = f
        a += step
    return out


def _by_row(row, R):
    """Pairs by row (row [P] in 0..R-1) -> pos [R, C], valid [R, C]: positions in the pairs sorted stably by row;
    row r's pairs are pos[r, :n_r] in their order, C = max n_r; the rest of the row repeats its last pair (rows
    without pairs: the pair before theirs, or pair 0)."""
    n = torch.bincount(row, minlength=R)
    col = torch.arange(int(n.max()) if len(row) else 0, device=row.device)
    pos = ((n.cumsum(0) - n)[:, None] + torch.minimum(col, n[:, None] - 1)).clamp(min=0)
    return pos, col < n[:, None]


# ----------------------------------------------------------------------------- first-pass error bounds
def _norm_bound(x):
    """Upper bounds of the rows' Euclidean norms [R] float64 (the float32 norm, raised past its rounding error).
    Rows whose float32 norm is below 2^-60 or above 2^60, where squares can underflow (entries below 2^-75 add 0:
    a norm of 0 would void every bound) or overflow, are taken again in float64, where squares of float32 are exact."""
    n = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).double()
    odd = ~((n > 2.0 ** -60) & (n < 2.0 ** 60))                             # also NaN
    if odd.any():
        n[odd] = torch.linalg.vector_norm(x[odd].double(), dim=1)
    return n * (1 + (x.shape[1] + 4) * 2.0 ** -23)


def _fp32_matmul_is_ieee(device):
    """False when torch may run float32 matmuls with rounded inputs (TF32 on CUDA, bf16 in oneDNN)."""
    backend = torch.backends.cuda.matmul if device.type == "cuda" else getattr(torch.backends.mkldnn, "matmul", None)
    flag = getattr(backend, "fp32_precision", None)
    return flag in ("none", "ieee") if flag is not None else torch.get_float32_matmul_precision() == "highest"


def _error_bound(qa, ql, qn, pmax, precision):
    """(A [Qb] float64, B): |s_hat - c| <= A + B |s_hat| for every passage p with |p| <= pmax, where s_hat is the
    first pass's score of q . p and c the returned one (_row_scores). With s the exact q . p and |q| <= qn [Qb]:
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


def _bits(x):
    """The bits of bfloat16 or float32 x read as signed integers of the same width (a view). Non-negative floats
    order as their bit patterns do, and every negative one (-0.0 included) reads as a negative integer: so for t > 0,
    x >= t exactly when _bits(x) >= _bits(t), and a maximum of bits that is >= 0 is the bits of the maximum."""
    return x.view(torch.int16 if x.dtype == torch.bfloat16 else torch.int32)


def _floats(x):
    """The inverse view of _bits."""
    return x.view(torch.bfloat16 if x.dtype == torch.int16 else torch.float32)


def _score_blocks(p, ql, pb, G, buf, pl):
    """Yield (b, s) for each block of pb passages from row b: s [B, Qb] = p[b:b + n] @ ql^T in ql's dtype, a view of
    buf; B = n rounded up to a multiple of G, the rows past n set to -inf. pl: a [pb, d] buffer for the passages in
    ql's dtype (None where that is p's)."""
    for b in range(0, len(p), pb):
        n = min(pb, len(p) - b)
        s = buf[:-(-n // G) * G]
        _matmul(p[b:b + n] if pl is None else pl[:n].copy_(p[b:b + n]), ql, out=s[:n])
        s[n:] = -math.inf
        yield b, s


def _group_max(s, G, ints, out):
    """Maxima of s [B, Qb] over groups of G consecutive rows, into out [>= B/G, Qb]; ints: of _bits(s) (a faster
    reduction than of bfloat16 values; out then an integer tensor)."""
    return torch.amax((_bits(s) if ints else s).view(-1, G, s.shape[1]), 1, out=out[:len(s) // G])


def _kth_super_max(blocks, G, k, H, ints, M):
    """Pass 1 -> R [Qb] float32 such that k passages score >= R[j] for query j: the k-th largest of the first-pass
    maxima over H >= k super-groups, super-group h being the groups g with g mod H = h (disjoint sets of passages).
    M [N/G, Qb] receives the groups' maxima. ints: maxima of _bits (M an integer tensor), and R = -inf where that
    k-th largest is negative (a value not read)."""
    S = torch.full((H, M.shape[1]), -1 if ints else -math.inf, dtype=M.dtype, device=M.device)
    for b, s in blocks:
        g = b // G
        mb = _group_max(s, G, ints, M[g:])
        t = 0
        while t < len(mb):  # fold the groups' maxima into S, wrapping around
            h = (g + t) % H
            n = min(len(mb) - t, H - h)
            torch.maximum(S[h:h + n], mb[t:t + n], out=S[h:h + n])
            t += n
    R = S.topk(k, dim=0).values[-1]
    return torch.where(R >= 0, _floats(R).float(), -math.inf) if ints else R.float()


def topk_threshold(q, p, k, precision="fp32", q_block=None, p_block=None, group=16):
    """Exact top-k in three steps: a first pass (a float32 or bfloat16 matmul) twice over the passages, once to
    bound each query's k-th best score from below and once to keep every passage that can still be in its top k,
    then _exact_top scores the kept ones exactly and takes the tie-exact top k.

    For each block of queries qa [Qb, d], with s_hat = p_block @ qa^T in the first pass's precision, by blocks of B
    passages into one reused buffer [B, Qb], and M [N/G, Qb] the maxima of s_hat over groups of G passages:
      pass 1: R = the k-th largest maximum over H = min(4k, N/G) super-groups of groups (G <= N/k, so H >= k): k
              passages have s_hat >= R (_kth_super_max); thr = _threshold(R): every passage of the exact top k
              (ties included) has s_hat >= thr, from the proven bound on the first pass's error (_error_bound);
      pass 2: the scores again; the groups whose maximum reaches thr are read and their passages with s_hat >= thr
              kept: a group holding such a passage has such a maximum, so none is missed.
    Where thr > 0 for every query (the usual case) M holds the maxima of the scores' bits read as integers (_bits:
    about 3x faster than of bfloat16 values), which decide s_hat >= thr exactly; else the values'. A query's top k
    lies in its top H super-groups; with H = 4k, R is near its k-th best score, and pass 2 keeps about k passages a
    query plus those the error bound cannot tell apart. A query whose (near-)ties keep more than 32 k has them cut to
    its exact top k so far (_cut).
    Measured at 100k and 1M x 128, Q = 1000, k = 100, 2 CPU threads (bench.py search; A/B runs alternated): blocks of
    16 MiB of scores (8: 6 % slower at 100k, 32: 7 % slower at 100k, 6 % faster at 1M), G = 16; M kept from pass 1
    rather than taken again, 4 % faster; every op on 2 threads (1 thread for the selection: 15-25 % slower).
    Extra memory: the score block, a block of passages in the first pass's dtype, M (2 or 4 bytes a group and query:
    125 MB at 1M passages and 1000 queries in bf16; query blocks shrink to keep it under 256 MiB), the [H, Qb]
    super-group maxima, the candidates (about (k + slack) Qb pairs) and the [Q, k] results.
    """
    _check(q, p, k)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"exact_topk: precision {precision!r} must be 'auto', 'fp32' or 'bf16'")
    for name, v in (("q_block", q_block), ("p_block", p_block), ("group", group)):
        if v is not None and v < 1:
            raise ValueError(f"exact_topk: {name} = {v} must be at least 1 (or None: chosen from the shapes)")
    N, dev = len(p), q.device
    G = max(1, min(group, N // k))                                               # so that N / G >= k
    pn, qn_all = _norm_bound(p), _norm_bound(q)                                  # bounds of every |p|, |q|
    pmax = float(pn.max())
    if precision == "bf16" and not (pmax < 2.0 ** 127 and bool((qn_all < 2.0 ** 127).all())):
        precision = "fp32"  # entries may round to inf in bfloat16 (only with |q| or |p| >= 2^127, the other tiny)
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    qb = max(1, q_block or min(len(q), 1024, (1 << 28) // (-(-N // G) * dt.itemsize)))  # M under 256 MiB
    budget = (min(1 << 32, torch.cuda.mem_get_info(dev)[0] // 4) if q.is_cuda else 1 << 24) // dt.itemsize  # scores
    pb = -(-min(N, p_block or max(G, budget // qb)) // G) * G                    # a multiple of G
    H = min(4 * k, -(-N // G))                                                   # super-groups, >= k
    out_s, out_i = torch.empty(len(q), k, device=dev), torch.empty(len(q), k, dtype=torch.long, device=dev)
    for a in range(0, len(q), qb):
        qa = q[a:a + qb]                                                         # [Qb, d]
        Qb, ql, qn = len(qa), qa.to(dt), qn_all[a:a + qb]
        if not float(qn.max()) * pmax < 2.0 ** 100:  # also catches inf and NaN
            raise ValueError("exact_topk: q and p must be finite, with |q| |p| < 2^100 for every pair")
        A, B = _error_bound(qa, ql, qn, pmax, precision)
        buf = torch.empty(pb, Qb, dtype=dt, device=dev)                          # [B, Qb] s_hat, reused
        pl = torch.empty(pb, p.shape[1], dtype=dt, device=dev) if dt != p.dtype else None
        M = torch.empty(-(-N // G), Qb, dtype=_bits(buf).dtype, device=dev)     # [N/G, Qb] group maxima
        R, bits = _kth_super_max(_score_blocks(p, ql, pb, G, buf, pl), G, k, H, True, M), True  # pass 1
        if (R == -math.inf).any():  # a k-th largest maximum below zero: again with the values
            R, bits = _kth_super_max(_score_blocks(p, ql, pb, G, buf, pl), G, k, H, False, M.view(dt)), False
        thr = _threshold(R, A, B, dt)
        ints = bits and bool((thr > 0).all())                                    # compare bits, else values
        keys, vals = [], []                                                      # candidates: id * Qb + row
        n = torch.zeros(Qb, dtype=torch.long, device=dev)                        # [Qb] candidates a query
        one = [(0, buf[:len(M) * G])] if pb >= N else None  # one block of every passage: pass 1's scores again
        for b, s in one or _score_blocks(p, ql, pb, G, buf, pl):  # pass 2
            g, V = b // G, M.view(dt)
            if ints:                                                             # M holds bits, every thr > 0
                mb, cut = M[g:g + len(s) // G], _bits(thr)
            else:  # values: pass 1's, or taken now (bits cannot tell a score from a threshold <= 0)
                mb, cut = _group_max(s, G, False, V[g:]) if bits else V[g:g + len(s) // G], thr
            hg, hq = (mb >= cut).nonzero().unbind(1)                             # groups reaching thr, their query
            v = s.view(-1, G, Qb)[hg, :, hq]                                     # [h, G] their s_hat
            j, t = (v >= thr[hq, None]).nonzero().unbind(1)                      # most of a group stays below
            keys.append((hg[j] * G + t + b) * Qb + hq[j])
            vals.append(v[j, t].float())
            n += torch.bincount(hq[j], minlength=Qb)
            if int(n.max()) > 32 * k:  # near-ties or ties: those queries keep only their exact top k so far
                keys, vals = _cut(qa, p, pn, torch.cat(keys), torch.cat(vals), n > 32 * k, k, A, B)
                keys, vals, n = [keys], [vals], torch.bincount(keys % Qb, minlength=Qb)
        out_s[a:a + qb], out_i[a:a + qb] = _exact_top(qa, p, pn, torch.cat(keys), torch.cat(vals), k, A, B)
    return out_s, out_i


def _cut(qa, p, pn, keys, vals, heavy, k, A, B):
    """Candidates (keys id * Qb + row, ids ascending within a row; vals their s_hat) with the rows marked heavy [Qb]
    cut to their exact top k so far: later passages have higher rows, so they never win a tie against these. Per
    query, as _exact_top pads every row to the longest (one zero query among 1024 would pad all to N). -> keys, vals
    in their order."""
    Qb = len(qa)
    sel, hr = heavy[keys % Qb], heavy.nonzero().flatten()                      # heavy rows' pairs, those rows [h]
    hk = keys[sel] // Qb * len(hr) + (heavy.cumsum(0) - 1)[keys[sel] % Qb]    # rows renumbered 0..h-1
    top = _exact_top(qa[hr], p, pn, hk, vals[sel], k, A[hr], B)[1] * Qb + hr[:, None]
    ok = ~sel
    ok[sel] = torch.isin(keys[sel], top)
    return keys[ok], vals[ok]


def _exact_top(qa, p, pn, keys, vals, k, A, B):
    """The tie-exact top k by exact score (scores, ids [Qb, k]) of candidate pairs: keys id * Qb + row, in ascending
    id order within each row, at least k a row; vals their first-pass scores s_hat, within A + B |s_hat| of the exact
    ones (_error_bound). Two steps: each row's k best by s_hat are scored exactly; the least of those k scores, L,
    bounds the row's k-th best exact score from below, so of the rest only those whose s_hat can reach L
    (_threshold(L, exact=True)) are scored; the top k is taken from the scored ones by a stable sort (the columns
    are in id order, so ties go to the lower id; on rows this short, faster than select_topk)."""
    Qb = len(qa)
    row = keys % Qb
    pos, valid = _by_row(row, Qb)
    o = torch.sort(row.int(), stable=True).indices[pos]                          # [Qb, C] pairs, ids ascending
    ids = keys[o] // Qb                                                          # [Qb, C]
    v = torch.where(valid, vals[o], -math.inf)                                   # [Qb, C] s_hat, -inf past a row
    top = v.topk(k, dim=1).indices                                               # [Qb, k]
    c = _row_scores(qa, p, ids.gather(1, top), pn)
    thr = _threshold(c.amin(1), A, B, torch.float32, exact=True)
    sc = torch.full(v.shape, -math.inf, device=v.device).scatter_(1, top, c)     # exact scores, -inf: not scored
    more = (v >= thr[:, None]) & (sc == -math.inf)                               # can still reach L
    n = more.sum(1)
    if n.any():
        cols = torch.sort(more.byte(), dim=1, descending=True, stable=True).indices[:, :int(n.max())]  # [Qb, C2]
        r = torch.argsort(n, descending=True)                                # rows by how many: less padding
        c = torch.empty(cols.shape, device=v.device)
        c[r] = _row_scores(qa[r], p, ids.gather(1, cols)[r], pn, n[r])
        sc.scatter_(1, cols, torch.where(torch.arange(cols.shape[1], device=v.device) < n[:, None], c,
                                         sc.gather(1, cols)))
    s, col = torch.sort(sc, dim=1, descending=True, stable=True)               # ties: the lower column, id
    return s[:, :k], ids.gather(1, col[:, :k])


def _bf16_is_fast(device):
    """bf16 matmuls run at least as fast as float32 ones: CUDA with bf16, or a CPU with AVX512_BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def exact_topk(q, p, k, precision="auto", q_block=None, p_block=None):
    """Exact maximum inner product top-k: q [Q, d], p [N, d] float32 on one device -> (scores [Q, k] float32,
    ids [Q, k] int64), rows sorted by score descending, ties to the lower passage row. 1 <= k <= N, else ValueError.

    Scores are the correctly rounded float32 of the exact inner products (_row_scores). precision is the first
    pass's: 'fp32', 'bf16' (a fraction of the matmul time on CPUs with AVX512_BF16 or AMX, and on GPUs) or 'auto' =
    bf16 where that is fast and there are at least 64 queries and 64 k passages, else fp32. Every choice returns the
    same tensors; block sizes follow the shapes and the device (q_block, p_block override them).
    """
    _check(q, p, k)
    if precision == "auto":
        big = len(q) >= 64 and len(p) >= 64 * k
        precision = "bf16" if big and _bf16_is_fast(q.device) else "fp32"
    return topk_threshold(q, p, k, precision, q_block, p_block)


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
        evaluate.write_trec(args.out, qids, pids, scores, ids, args.tag)
    except (OSError, ValueError) as e:  # InputError and any other bad-input ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"search: {t:.2f} s ({len(q) / max(t, 1e-9):.0f} queries/s); wrote {args.out} ({len(q) * args.k} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
