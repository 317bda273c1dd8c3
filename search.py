"""Exact retrieval for evaluation and hard negatives: dense maximum inner product top-k, BM25, TREC run files.

    scores, ids = exact_topk(q, p, k=100)            # q [Q, d], p [N, d] float32, CPU or CUDA -> [Q, k], [Q, k]
    scores, ids = BM25(docs).search(queries, k=100)  # docs, queries: lists of token-id lists
    write_trec("run.trec", qids, pids, scores, ids, tag="de")

    python search.py --queries Q.npy --passages P.npy --qids qids.txt --pids pids.txt --k 100 --out run.trec

Every top-k here is exact and deterministic: rows sorted by score descending, ties broken by the lower passage row
first (the order of sorting on (-score, id)), whatever the block sizes or the path.

Dense search walks the passages block by block and merges running top-k lists (as faiss contrib/exhaustive_search),
never holding a Q x N score matrix. Two paths, equal results:
- `topk_blocked`, the plain one: each block's scores -> the block's top-k -> merged with the running top-k.
  Used on CUDA and when k is large against N.
- `topk_threshold`, the CPU one: each query's running k-th best score is a threshold. A block's scores are written
  passage-major into one reused buffer; their maxima over groups of G passages are compared with the thresholds,
  and only the groups that beat them are read again. Few scores are ever sorted; the matmul is nearly all that is
  left (bench.py search: about faiss IndexFlatIP's time on 2 CPU cores).
tests/test_search.py checks both against a brute-force stable sort of the full score matrix, and BM25 against a
per-pair loop. (Encoding with a saved dual-encoder lives in train.py: this file does not import the model.)

Shapes: Q queries, N passages, d dims, k results per query, B passages per block, G passages per group.
"""
import argparse
import math
import os
import sys
import time
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


def merge_topk(s1, i1, s2, i2, k):
    """The first k of two lists [R, k1], [R, k2], each in (score desc, id asc) order, where every id of the second
    is higher than every id of the first: -> scores, ids [R, min(k, k1 + k2)].

    Concatenated, equal scores stand in ascending id order, so a stable sort on the score keeps the tie rule.
    """
    s, i = torch.cat([s1, s2], 1), torch.cat([i1, i2], 1)
    s, order = s.sort(dim=1, descending=True, stable=True)
    return s[:, :k], i.gather(1, order[:, :k])


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


def _blocks(Q, N, q_block, p_block, score_bytes, multiple=1):
    """(queries, passages) per block: all queries up to 1024, and passages so that a block of float32 scores takes
    about score_bytes (at most N), rounded up to a multiple; q_block / p_block override."""
    qb = max(1, q_block or min(Q, 1024))
    pb = p_block or min(N, max(256, score_bytes // (4 * qb)))
    return qb, -(-pb // multiple) * multiple


def topk_blocked(q, p, k, q_block=None, p_block=None):
    """The plain path: per block of queries and block of passages, scores [Qb, B] -> the block's top-k
    (select_topk) -> merged into the running top-k (merge_topk). Extra memory: about one block of scores
    (64 MiB on the CPU, 1 GiB on CUDA, by default) and the [Q, k] results."""
    _check(q, p, k)
    qb, pb = _blocks(len(q), len(p), q_block, p_block, 1 << 30 if q.device.type == "cuda" else 1 << 26)
    out_s = torch.empty(len(q), k, device=q.device)
    out_i = torch.empty(len(q), k, dtype=torch.long, device=q.device)
    for a in range(0, len(q), qb):
        best_s = best_i = None
        for b in range(0, len(p), pb):
            s = q[a:a + qb] @ p[b:b + pb].T                                  # [Qb, B]
            s, i = select_topk(s, min(k, s.shape[1]))                        # [Qb, <=k]
            i += b
            best_s, best_i = (s, i) if best_s is None else merge_topk(best_s, best_i, s, i, k)
        out_s[a:a + qb], out_i[a:a + qb] = best_s, best_i
    return out_s, out_i


def _merge_candidates(best_s, best_i, key, cs, k):
    """Merge candidates into the running top-k best_s, best_i [Qb, k], in place, for the query rows concerned.

    key = passage id * Qb + query row and cs = score, 1-D, every id above the ids in best. A candidate not above its
    query's current k-th best score cannot enter (a tie goes to the lower id, already in best): dropped first.
    """
    Qb = len(best_s)
    ok = cs > best_s[:, -1][key % Qb]
    key, cs = key[ok], cs[ok]
    if not len(key):
        return
    cq, ci = key % Qb, key // Qb
    order = torch.argsort(cq * (int(ci.max()) + 1) + ci)                    # by query, then ascending id
    cq, ci, cs = cq[order], ci[order], cs[order]
    counts = torch.bincount(cq, minlength=Qb)                                # candidates per query   [Qb]
    rows = counts.nonzero().squeeze(1)                                       # the queries concerned  [R]
    col = torch.arange(len(cq), device=cq.device) - (counts.cumsum(0) - counts)[cq]  # place within its query
    slot = torch.empty_like(counts)
    slot[rows] = torch.arange(len(rows), device=rows.device)
    pad_s = torch.full((len(rows), int(counts.max())), -math.inf, device=cs.device)  # [R, most candidates]
    pad_i = torch.full(pad_s.shape, -1, dtype=torch.long, device=ci.device)
    pad_s[slot[cq], col], pad_i[slot[cq], col] = cs, ci
    best_s[rows], best_i[rows] = merge_topk(best_s[rows], best_i[rows], pad_s, pad_i, k)


def topk_threshold(q, p, k, q_block=None, p_block=None, group=16, merge_every=128):
    """The CPU path; equal to topk_blocked. For each block of queries qa [Qb, d], for each block of B passages:
      s = p_block @ qa^T, into one reused buffer                                              [B, Qb]
      m = max of s over groups of G consecutive passages                                      [B/G, Qb]
      the scores >= thr of each (group, query) pair with m > thr are kept as candidates,
    where thr = each query's running k-th best score. The candidates are merged into the running top-k once they
    exceed merge_every * Qb (and after the first and the last block), and thr becomes its new k-th best score.
    In the first block, before any k-th best exists, thr = the k-th largest group maximum (k groups reach it, so
    at least k scores do) and the test is m >= thr, so the first merge fills the top-k.
    Exact: a passage can enter the final top-k only if it beats the running k-th best when it is seen (a tie goes to
    the lower id, seen earlier), and thr is never above the running k-th best, so no such passage is skipped.
    Defaults measured at 1M x 128, Q = 1000, k = 100 on 2 shared CPU cores (bench.py search): B = 32k passages
    (128 MiB of scores) because each parallel op waits for its slowest thread, and on busy cores that wait, not the
    arithmetic, grows with the number of ops (B = 2k took 3x longer there; on one thread B hardly matters).
    Extra memory: the score buffer, the candidates, the [Q, k] results (~210 MiB in all at 1M x 128, Q = 1000).
    """
    _check(q, p, k)
    N, G = len(p), group
    qb, pb = _blocks(len(q), N, q_block, p_block, 1 << 27, multiple=G)
    out_s = torch.empty(len(q), k, device=q.device)
    out_i = torch.empty(len(q), k, dtype=torch.long, device=q.device)
    ar = torch.arange(G, device=q.device)
    for a in range(0, len(q), qb):
        qa = q[a:a + qb]                                                     # [Qb, d]
        Qb = len(qa)
        best_s = torch.full((Qb, k), -math.inf, device=q.device)             # running top-k, empty   [Qb, k]
        best_i = torch.full((Qb, k), -1, dtype=torch.long, device=q.device)
        buf = torch.empty(pb, Qb, device=q.device)                           # [B, Qb] scores, reused
        m = torch.empty(pb // G, Qb, device=q.device)                        # [B/G, Qb] group maxima
        over = torch.empty(pb // G, Qb, dtype=torch.bool, device=q.device)
        keys, vals, pending = [], [], 0
        for b in range(0, N, pb):
            n = min(pb, N - b)
            ng = -(-n // G)                                                  # groups, the last maybe partial
            s = buf[:ng * G]                                                 # [B, Qb]
            torch.mm(p[b:b + n], qa.T, out=s[:n])
            if n < ng * G:
                s[n:] = -math.inf                                            # rows past N never win
            torch.amax(s.view(ng, G, Qb), 1, out=m[:ng])
            if b == 0:  # no k-th best yet: the k-th largest group maximum, or everything when too few groups
                thr = m[:ng].topk(k, dim=0).values[-1] if ng >= k else torch.full_like(best_s[:, 0], -math.inf)
                hit = torch.ge(m[:ng], thr, out=over[:ng]).nonzero()
            else:
                hit = torch.gt(m[:ng], thr, out=over[:ng]).nonzero()         # [h, 2]: group, query
            if len(hit):
                flat = ((hit[:, :1] * G + ar) * Qb + hit[:, 1:]).flatten()  # [h*G] row in block * Qb + query
                v = s.view(-1)[flat]
                ok = v >= thr[flat % Qb]                                     # most of a group stays below
                keys.append(flat[ok] + b * Qb)
                vals.append(v[ok])
                pending += len(vals[-1])
            if pending and (pending > merge_every * Qb or b == 0 or b + pb >= N):
                _merge_candidates(best_s, best_i, torch.cat(keys), torch.cat(vals), k)
                thr = best_s[:, -1].clone()
                keys, vals, pending = [], [], 0
        out_s[a:a + qb], out_i[a:a + qb] = best_s, best_i
    return out_s, out_i


def exact_topk(q, p, k, q_block=None, p_block=None):
    """Exact maximum inner product top-k: q [Q, d], p [N, d] float32 on one device -> (scores [Q, k] float32,
    ids [Q, k] int64), rows sorted by score descending, ties to the lower passage row. 1 <= k <= N, else ValueError.

    Block sizes follow the shapes and the device (q_block, p_block override them). On the CPU with k small against
    N: topk_threshold; otherwise topk_blocked. Both give the same tensors.
    """
    _check(q, p, k)
    if q.device.type == "cpu" and len(p) >= 64 * k:
        return topk_threshold(q, p, k, q_block, p_block)
    return topk_blocked(q, p, k, q_block, p_block)


# ----------------------------------------------------------------------------- BM25
class BM25:
    """Okapi BM25 over token ids, with Lucene's idf (Robertson & Zaragoza 2009; Lucene BM25Similarity):
        score(q, p) = sum over the tokens t of q of  idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |p| / avgdl))
        idf(t) = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5)),  tf = tf(t, p) the count of t in p
    A token repeated in the query counts once per occurrence (query term frequency as a linear weight, as the
    bag-of-words queries of Lucene/Anserini do); tokens absent from the corpus add nothing.

    Stored as postings: for each token its passages and their weights w(t, p) = idf * tf * (k1 + 1) / (...).
    search scores a block of queries at once into a dense [Qb, N] matrix (float64 sums, then float32) and takes the
    tie-exact top-k, so passages scoring 0 follow the scored ones in id order.
    """

    def __init__(self, docs, k1=0.9, b=0.4):
        self.N = len(docs)
        if self.N == 0:
            raise ValueError("BM25: no documents")
        lens = torch.tensor([len(d) for d in docs], dtype=torch.long)                        # [N]
        toks = torch.from_numpy(np.fromiter(chain.from_iterable(docs), np.int64, int(lens.sum())))
        if len(toks) and int(toks.min()) < 0:
            raise ValueError("BM25: negative token id")
        self.V = int(toks.max()) + 1 if len(toks) else 0
        doc = torch.repeat_interleave(torch.arange(self.N), lens)
        key, tf = torch.unique(toks * self.N + doc, return_counts=True)                       # sorted: token, then doc
        term, self.doc = key // self.N, key % self.N                                          # one entry per posting
        df = torch.bincount(term, minlength=self.V).double()                                  # [V]
        idf = torch.log1p((self.N - df + 0.5) / (df + 0.5))
        dl = lens.double()
        norm = k1 * (1 - b + b * dl / max(dl.mean().item(), 1e-9))                            # [N]
        tf = tf.double()
        self.w = idf[term] * tf * (k1 + 1) / (tf + norm[self.doc])                            # [postings]
        self.start = torch.cat([torch.zeros(1, dtype=torch.long), df.long().cumsum(0)])      # [V + 1]

    def scores(self, queries):
        """Dense BM25 scores [len(queries), N] float64 (float32 of these are what search ranks)."""
        lens = torch.tensor([len(t) for t in queries], dtype=torch.long)
        rows = torch.repeat_interleave(torch.arange(len(queries)), lens)                  # query row of each token
        toks = torch.tensor(list(chain.from_iterable(queries)), dtype=torch.long)
        known = (toks >= 0) & (toks < self.V)
        rows, toks = rows[known], toks[known]
        lo = self.start[toks]
        n = self.start[toks + 1] - lo                                      # postings lo .. lo + n - 1 of each token
        at = torch.repeat_interleave(lo - (n.cumsum(0) - n), n) + torch.arange(int(n.sum()))  # all those postings
        out = torch.zeros(len(queries) * self.N, dtype=torch.float64)
        out.index_add_(0, torch.repeat_interleave(rows, n) * self.N + self.doc[at], self.w[at])
        return out.view(len(queries), self.N)

    def search(self, queries, k, postings_per_block=1 << 21):
        """Top-k passages of each query (a list of token ids; empty -> every score 0): -> (scores [Q, k] float32,
        ids [Q, k] int64), sorted by score descending, ties (zeros included) to the lower passage id."""
        if not 1 <= k <= self.N:
            raise ValueError(f"BM25.search: k = {k} must be in 1..N = {self.N}")
        if any(min(t, default=0) < 0 for t in queries):
            raise ValueError("BM25.search: negative token id in a query")
        df = (self.start[1:] - self.start[:-1]).tolist()
        cost = [self.N + sum(df[t] for t in toks if t < self.V) for toks in queries]  # work of each query
        out_s, out_i = torch.empty(len(queries), k), torch.empty(len(queries), k, dtype=torch.long)
        a = 0
        while a < len(queries):  # blocks of queries with about postings_per_block dense cells and postings
            b, total = a, 0
            while b < len(queries) and (b == a or total + cost[b] <= postings_per_block):
                total, b = total + cost[b], b + 1
            out_s[a:b], out_i[a:b] = select_topk(self.scores(queries[a:b]).float(), k)
            a = b
        return out_s, out_i


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
              f"{torch.get_num_threads()} threads", flush=True)
        t0 = time.perf_counter()
        scores, ids = exact_topk(q, p, args.k)
        t = time.perf_counter() - t0
        write_trec(args.out, qids, pids, scores, ids, args.tag)
    except (OSError, ValueError) as e:  # InputError and any other bad-input ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"search: {t:.2f} s ({len(q) / max(t, 1e-9):.0f} queries/s); wrote {args.out} ({len(q) * args.k} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
