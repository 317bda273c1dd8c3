"""BM25 over token ids (Robertson et al.; the Lucene/Anserini form, k1 = 0.9, b = 0.4 by default): the lexical
retriever of xqg, for BM25 negatives, the bm25 row of every results table and the hybrid.

    scores, ids = BM25(docs).search(queries, k=100)  # docs, queries: lists of token-id lists -> [Q, k] twice

An inverted index of postings (token, passage, weight) sorted by token; a block of queries gathers its tokens'
postings into dense scores and takes the exact top k (search.select_topk: ties to the lower passage id).
tests/test_search.py checks it against a per-pair loop.
"""
from itertools import chain

import numpy as np
import torch

from search import select_topk


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
