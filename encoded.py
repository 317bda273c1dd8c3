"""The data set as the networks read it, tokenised once, and what is computed from it before a loss: embeddings,
rankings (dense and BM25) and hard negatives. The plumbing under train.py.

Every input form side by side (rows of a padded matrix, built once, cut to a batch's longest sequence on use):
    passage     [P] title text             P_ids   [N, Tp]  DE passage side, QG encoder input, CE second segment
    query       [Q] q                      Q_ids   [Q, Tq]  DE query side
                <2l> q [EOS]               T_ids   [Q, Tq]  QG target: the tag names the language to write
                [CLS] q [SEP] p            built per (query, candidate) pair by `ce_pairs`
Passages and queries are addressed by row: passage rows index ds.pids, `qrow[qid]` the query matrices.

Shapes: N passages, Q queries, T tokens, C channels, k candidates per query.
"""
import math
import random
from dataclasses import dataclass

import torch

import data
import dist
from bm25 import BM25
from model import ModelConfig, pad_batch
from outdir import DEVICE, Progress, autocast, log
from teacher import QueryGenerator

NO_LIMIT = 1 << 30   # a max_len that keeps every token (BM25 reads whole passages)
EMBED_BATCH = 256    # sequences per DE forward pass when embedding
SCORE_CHUNK = 16     # queries per teacher-scoring call (each with its 1 + K candidates)
SELECT_DEV = 200     # dev queries a teacher in training is judged on (train.fit, cfg.teacher_select)
POOL_SLACK = 5       # a ranking fetches this many passages beyond those it keeps: room for the positives it drops


def batch_rows(ids, mask, index):
    """Rows `index` of a padded matrix, cut to their longest sequence, on the device."""
    ids, mask = ids[index], mask[index]
    T = max(1, int(mask.sum(1).max()))
    return ids[:, :T].to(DEVICE), mask[:, :T].to(DEVICE)


def pad_on_device(seqs):
    return tuple(v.to(DEVICE) for v in pad_batch(seqs))


@dataclass
class Candidates:
    """C(q) of some queries with every scorer's scores on it; the kd stage caches the training queries' (kd_cache.pt)."""
    qids: list            # the queries, in the order of every row below
    cand: torch.Tensor    # [Q, 1+K] corpus rows: the query's first positive p+ in column 0, the warm DE's top K others
    de: torch.Tensor      # [Q, 1+K] s(q, p), the warm DE
    qg: torch.Tensor      # [Q, 1+K] r(q, p), the QG teacher
    ce: torch.Tensor      # [Q, 1+K] c(q, p), the CE teacher
    written: int = 0      # how many of the rows, the last ones, are the QG's written distillation queries (written.py)


class EncodedData:
    """A data.Dataset tokenised in every input form, with each query's positives and the training queries."""

    def __init__(self, ds, tok, max_len_q, max_len_p, pivot):
        self.ds, self.tok = ds, tok
        passages = data.encode(tok, [ds.passage_text(i) for i in range(len(ds.pids))], max_len_p, [data.P])
        self.P_ids, self.P_mask = pad_batch(passages)                                     # [N, Tp]
        self.P_tokens = [p[1:] for p in passages]                                          # without the marker
        self.qids = list(ds.queries)
        self.qrow = {q: i for i, q in enumerate(self.qids)}
        self.Q_tokens = data.encode(tok, ds.queries.values(), max_len_q - 2)              # room for a tag and [EOS]
        self.Q_ids, self.Q_mask = pad_batch([[data.Q] + q for q in self.Q_tokens])       # [Q, Tq]
        langs = [*ds.languages(), pivot, *ds.unlabelled]
        self.tag = {lang: tok.token_to_id(data.lang_tag(lang)) for lang in langs}          # language -> <2l> id
        self.q_lang = [ds.lang.get(q) for q in self.qids]
        self.T_ids, self.T_mask = self.targets(self.q_lang, self.Q_tokens)                 # [Q, Tq]
        row = {p: i for i, p in enumerate(ds.pids)}
        self.pos = {q: [row[p] for p, s in rel.items() if s > 0] for split in ds.qrels.values() for q, rel in split.items()}
        self.train = [q for q in ds.qrels.get("train", {}) if self.pos[q]]                # queries with a positive
        self.dev = [q for q in ds.qrels.get("dev", {}) if self.pos[q]]
        self._bm25 = None

    @classmethod
    def tokenized(cls, ds, out, vocab_size, max_len_q, max_len_p, pivot):
        """The data set tokenised by out's tokenizer.json, which is trained first when it is missing."""
        if out.todo("tokenizer", "tokenizer.json"):
            tok = data.train_tokenizer(data.tokenizer_texts(ds), ds.languages() + [pivot] + list(ds.unlabelled), vocab_size)
            out.write_text("tokenizer.json", tok.to_str(pretty=True))
            log("tokenizer", f"{tok.get_vocab_size()} tokens")
        return cls(ds, out.load_tokenizer(), max_len_q, max_len_p, pivot)

    def model_config(self, cfg):
        """The networks' shape (DE, CE, QG) from a train.Config, for this tokenizer's vocabulary."""
        return ModelConfig(vocab_size=self.tok.get_vocab_size(), dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                           max_len=cfg.max_len_q + cfg.max_len_p, dropout=cfg.dropout, pooling=cfg.pooling,
                           normalize=cfg.normalize, init_std=cfg.init_std, n_dec_layers=cfg.n_dec_layers)

    def targets(self, langs, tokens):
        """<2l> q [EOS] of queries (lists of token ids) in languages `langs`: ids, mask [n, T] on the CPU."""
        return pad_batch([[self.tag.get(x, data.UNK)] + toks + [data.EOS] for x, toks in zip(langs, tokens)])

    def add_queries(self, qids, langs, tokens, rows):
        """Queries that exist for training only (the QG's written ones, written.py), appended to every query form:
        qids[i] in language langs[i], its tokens, its one positive passage rows[i] (a corpus row)."""
        if clash := set(qids) & set(self.qrow):
            raise ValueError(f"add_queries: query ids already in use: {sorted(clash)[:3]}")
        if unknown := set(langs) - set(self.tag):
            raise ValueError(f"add_queries: languages without a tag: {sorted(unknown)}")
        self.qrow.update((q, len(self.qids) + i) for i, q in enumerate(qids))
        self.qids, self.q_lang, self.Q_tokens = self.qids + list(qids), self.q_lang + list(langs), self.Q_tokens + list(tokens)
        self.Q_ids, self.Q_mask = pad_batch([[data.Q] + q for q in self.Q_tokens])
        self.T_ids, self.T_mask = self.targets(self.q_lang, self.Q_tokens)
        self.pos.update((q, [r]) for q, r in zip(qids, rows))

    def lang(self, q):
        """The language of a query (of the data set or added)."""
        return self.q_lang[self.qrow[q]]

    def rows(self, qids):
        """Row of each query in the query matrices."""
        return [self.qrow[q] for q in qids]

    def query_tokens(self, qids):
        return [self.Q_tokens[self.qrow[q]] for q in qids]

    def de_queries(self, qids):
        """[Q] q of the queries `qids`: ids, mask [len(qids), Tq] (on the CPU, uncut: a matrix to draw batches from)."""
        return self.Q_ids[self.rows(qids)], self.Q_mask[self.rows(qids)]

    def passages(self, rows):
        """[P] title text of corpus rows `rows`, on the device."""
        return batch_rows(self.P_ids, self.P_mask, rows)

    def qg_targets(self, qids):
        """<2l> q [EOS] of the queries `qids`, on the device."""
        return batch_rows(self.T_ids, self.T_mask, self.rows(qids))

    def ce_pairs(self, qids, cand):
        """[CLS] q [SEP] p for every (query, candidate) pair, cand [Q, k] corpus rows: ids, mask [Q*k, T] on the device."""
        return pad_on_device([[data.CLS] + q + [data.SEP] + self.P_tokens[p]
                              for q, row in zip(self.query_tokens(qids), cand.tolist()) for p in row])

    def positive(self, gen, q):
        """One of the query's positive passages (corpus row), drawn at random."""
        return self.pos[q][int(torch.randint(len(self.pos[q]), (1,), generator=gen))]

    def other_positives(self, qids, cand):
        """[B, M] bool, True where candidate cand[j] (corpus rows, [M]) is a positive of qids[i]."""
        return torch.tensor([[c in self.pos[q] for c in cand.tolist()] for q in qids], device=DEVICE)

    # ------------------------------------------------------------------------- what a training step draws

    @staticmethod
    def draw(gen, items, k):
        """k items drawn with replacement."""
        return [items[i] for i in torch.randint(len(items), (k,), generator=gen).tolist()]

    def share_of_train(self, frac, seed):
        """The first `frac` of each language's training queries, in a seeded order (the teachers' share, claim 1)."""
        rng, qids = random.Random(seed), []
        for lang in self.ds.languages():
            qs = [q for q in self.train if self.ds.lang[q] == lang]
            rng.shuffle(qs)
            qids += qs[:math.ceil(frac * len(qs))]
        return sorted(qids, key=self.qrow.get)

    def ranking_batch(self, gen, qids, pool, B, n):
        """B queries, each with its positive and n distinct negatives drawn from its pool row
        -> (indices into qids [B], candidates [B, 1 + n] corpus rows, the positive in column 0)."""
        b = torch.randint(len(qids), (B,), generator=gen)
        pos = [self.positive(gen, qids[i]) for i in b.tolist()]
        pick = torch.rand(B, pool.size(1), generator=gen).argsort(1)[:, :n]                 # n distinct per row
        return b, torch.cat([torch.tensor(pos)[:, None], pool[b[:, None], pick]], 1)

    # ------------------------------------------------------------------------- rankings and hard negatives

    @torch.no_grad()
    def embed(self, de, ids, mask, share=False):
        """DE embeddings of padded sequences, in eval mode: [n, C] float32 on the device. Under torchrun each rank
        embeds its share of the rows (dist.part), then the shares are gathered; share=True: only this rank's."""
        de.eval()
        rows, out = dist.part(len(ids)), [torch.zeros(0, de.cfg.dim, device=DEVICE)]  # a share may be empty
        for s in range(rows.start, rows.stop, EMBED_BATCH):
            with autocast():
                out.append(de.encode(*batch_rows(ids, mask, slice(s, min(s + EMBED_BATCH, rows.stop)))).float())
        e = torch.cat(out)                                                                   # [len(rows), C]
        return e if share else dist.gather_rows(e, len(ids))

    def embed_passages(self, de, share=False):
        return self.embed(de, self.P_ids, self.P_mask, share)                             # [N, C]

    def top_passages(self, q, p_share, k):
        """Exact search of the whole corpus: the top-k passages (scores, corpus rows [Q, k]) of query embeddings q
        [Q, C], p_share = embed_passages(de, share=True): under torchrun each rank searches its share (dist.py)."""
        return dist.exact_topk(q, p_share, min(k, len(self.P_ids)))

    def de_ranking(self, de, qids, k):
        """The DE's top-k passages for each query: [Q, k] corpus rows."""
        p = self.embed_passages(de, share=True)
        q = self.embed(de, *self.de_queries(qids))
        return self.top_passages(q, p, k)[1].cpu()

    def bm25(self):
        """The BM25 index of the whole passages (the networks see only their first max_len_p tokens), built once."""
        if self._bm25 is None:
            texts = [self.ds.passage_text(i) for i in range(len(self.ds.pids))]
            self._bm25 = BM25(data.encode(self.tok, texts, NO_LIMIT))
        return self._bm25

    def bm25_ranking(self, queries, k):
        """BM25's top-k passages for `queries` (lists of token ids): [Q, k] corpus rows, -1 where a passage shares
        no token with the query."""
        scores, ids = self.bm25().search(queries, min(k, len(self.P_tokens)))
        return ids.masked_fill(scores <= 0, -1)

    def with_bm25(self, qids, ranked):
        """A DE's ranking [Q, n] and BM25's taken in turn (d1, b1, d2, b2, ...; a passage once): [Q, n] corpus rows
        (-1 past the end)."""
        n = ranked.size(1)
        bm25 = self.bm25_ranking(self.query_tokens(qids), n)
        return torch.tensor([(list(dict.fromkeys(p for pair in zip(a, b) for p in pair if p >= 0)) + [-1] * n)[:n]
                             for a, b in zip(ranked.tolist(), bm25.tolist())])

    def negative_pool(self, qids, size, seed, de=None, union=False):
        """`size` hard negatives per query: from the DE's ranking when a DE is given (union: and BM25's in turn,
        with_bm25), else from BM25's: [Q, size]."""
        if de is None:
            ranked = self.bm25_ranking(self.query_tokens(qids), size + POOL_SLACK)
        else:
            ranked = self.de_ranking(de, qids, size + POOL_SLACK)
            ranked = self.with_bm25(qids, ranked) if union else ranked
        return self.hard_negatives(qids, ranked, size, seed)

    def hard_negatives(self, qids, ranked, size, seed):
        """Per query the first `size` ranked passages that are not its positives: [Q, size]; when a ranking runs
        short (BM25 on a query that shares no token with any passage) random passages fill it."""
        rng, out = random.Random(seed), []
        for q, row in zip(qids, ranked.tolist()):
            keep = [p for p in row if p >= 0 and p not in self.pos[q]][:size]
            while len(keep) < size:
                p = rng.randrange(len(self.P_tokens))
                if p not in self.pos[q] and p not in keep:
                    keep.append(p)
            out.append(keep)
        return torch.tensor(out)

    # ------------------------------------------------------------------------- scoring and search

    @torch.no_grad()
    def chunked(self, log_every, stage, n, size, fn):
        """fn(slice) for consecutive slices of range(n), under autocast, moved to the CPU and concatenated; a
        progress line every `log_every` seconds. Under torchrun each rank takes its share of range(n) (dist.part)
        and the parts of every rank are gathered."""
        rows, parts, progress = dist.part(n), [], Progress(stage, log_every)
        for s in range(rows.start, rows.stop, size):
            with autocast():
                parts.append(fn(slice(s, min(s + size, rows.stop))).cpu())
            progress.tick(min(rows.stop, s + size) - rows.start, rows.stop - rows.start)
        return dist.cat_parts(parts)

    def qg_scores(self, qg, tgt, cand):
        """The QG's r(q, p) over candidates cand [Q, k] (corpus rows) for targets tgt = (ids, mask) [Q, T] on the
        device -> [Q, k]. Each distinct passage of the batch is encoded once."""
        uniq, inv = cand.unique(return_inverse=True)
        return qg.score(*self.passages(uniq), *tgt, inv.to(DEVICE))

    def teacher_rates(self, de, qg, ce, qids, k, seed, log_every, union=False):
        """How well each scorer (warm DE, QG, CE) ranks the queries' C(q): p+ in the top 1 and top 5, reading the
        real query and reading another query of its language (a teacher that reads a prior of the candidates, not
        the query, keeps its rate there; chance is 1 / (1 + k) for the top 1)."""
        p = self.embed_passages(de, share=True) if qids else None     # C(q) and the corpus embedded once for both
        real = self.score_candidates(de, qg, ce, qids, k, seed, log_every, union=union, p_share=p)
        blind = self.score_candidates(de, qg, ce, qids, k, seed, log_every, self.others_of_same_language(qids, seed),
                                      union, p, real.cand)
        return {"top1": self.top_rate(real), "top5": self.top_rate(real, 5), "blind_top1": self.top_rate(blind),
                "blind_top5": self.top_rate(blind, 5)}

    def eval_splits(self):
        """{split: query ids} of dev and test, where they exist and judge some passage relevant."""
        return {s: list(self.ds.qrels[s]) for s in ("dev", "test")
                if s in self.ds.qrels and any(self.pos[q] for q in self.ds.qrels[s])}

    def retrieve(self, k, de, splits):
        """Exact search over the whole corpus with a DE for the queries of each split -> {split: (scores, rows)}."""
        p = self.embed_passages(de, share=True)                                  # [N, C] or this rank's share, once
        return {split: self.top_passages(self.embed(de, *self.de_queries(qids)), p, k)
                for split, qids in splits.items()}

    def pretrain_texts(self, max_len, pivot):
        """(language, token ids) of every text a model may see before its task: unlabelled sentences in every
        language, passages (pivot) and training queries."""
        ds, texts = self.ds, []
        for lang in sorted(ds.unlabelled):
            texts += [(lang, toks) for toks in data.encode(self.tok, ds.unlabelled[lang], max_len)]
        texts += [(pivot, toks) for toks in self.P_tokens]
        texts += [(ds.lang[q], toks) for q, toks in zip(self.train, self.query_tokens(self.train))]
        return [(lang, toks) for lang, toks in texts if toks and lang in self.tag]

    def score_candidates(self, de, qg, ce, qids, k, seed, log_every, readers=None, union=False, p_share=None, cand=None):
        """C(q) (kd_candidates) for each query of qids, scored by the DE and both teachers reading the query
        readers[i] (default: the query itself; another query of its language for the query-blind check,
        `others_of_same_language`). p_share, cand: the DE's passage embeddings (embed_passages(de, share=True))
        and the C(q) of these queries, when the caller has them."""
        if not qids:
            return Candidates([], torch.zeros(0, 1 + k, dtype=torch.long), *(torch.zeros(0, 1 + k) for _ in range(3)))
        readers, p = readers or qids, self.embed_passages(de, share=True) if p_share is None else p_share  # [N (mine), C]
        cand = self.kd_candidates(de, qids, k, seed, union, p) if cand is None else cand    # [Q, 1+k]
        q, p = self.embed(de, *self.de_queries(readers)), dist.gather_rows(p, len(self.P_ids))   # [Q, C], [N, C]
        log("teach", f"scoring {cand.numel()} (query, passage) pairs with both teachers")
        return Candidates(qids, cand, de=torch.einsum("qc,qmc->qm", q, p[cand.to(DEVICE)]).cpu(),
                          qg=self.teacher_scores(qg, readers, cand, log_every, "teach"),
                          ce=self.teacher_scores(ce, readers, cand, log_every, "teach"))

    def teacher_scores(self, teacher, readers, cand, log_every, stage):
        """A teacher's scores of the candidates cand [Q, k] (corpus rows) reading the queries `readers`: the QG's
        r(q, p) or the CE's c(q, p) -> [Q, k] float32 on the CPU."""
        if isinstance(teacher, QueryGenerator):
            fn = lambda s: self.qg_scores(teacher, self.qg_targets(readers[s]), cand[s]).float()
        else:
            fn = lambda s: teacher(*self.ce_pairs(readers[s], cand[s])).view(-1, cand.size(1)).float()
        return self.chunked(log_every, stage, len(readers), SCORE_CHUNK, fn)

    def dev_sample(self, seed):
        """The dev queries a teacher in training is judged on: at most SELECT_DEV, a seeded sample, in query order."""
        return sorted(random.Random(seed).sample(self.dev, min(len(self.dev), SELECT_DEV)), key=self.qrow.get)

    def dev_judge(self, de, k, seed, log_every, union, stage):
        """judge(teacher) -> the share of the dev queries (at most SELECT_DEV, a seeded sample) whose p+ the teacher
        alone ranks first among their C(q), strictly (top_rate), in eval mode; C(q) is built once, from the warm DE
        `de`, as the teach stage builds it. train.fit's checkpoint choice (cfg.teacher_select); None: no dev queries."""
        if not self.dev:
            log(stage, "no dev queries to choose a checkpoint on: the last step is kept")
            return None
        qids = self.dev_sample(seed)
        cand = self.kd_candidates(de, qids, k, seed, union)                                 # [Q, 1+k]

        def judge(teacher):
            s = self.teacher_scores(teacher.eval(), qids, cand, log_every, stage)            # [Q, 1+k]
            return ((s[:, 1:] >= s[:, :1]).sum(1) < 1).float().mean().item()
        return judge

    def kd_candidates(self, de, qids, k, seed, union=False, p_share=None):
        """C(q) = p+ (the query's first positive) and the DE's top k other passages: corpus rows [Q, 1+k]. union:
        the DE's and BM25's rankings taken in turn (d1, b1, d2, b2, ...; a passage once), so that where the DE
        cannot yet read a language p+ is not the one candidate unlike the others. p_share: the DE's passage
        embeddings (embed_passages(de, share=True)) when the caller has them."""
        q = self.embed(de, *self.de_queries(qids))                                         # [Q, C]
        p = self.embed_passages(de, share=True) if p_share is None else p_share            # [N (this rank's), C]
        ranked = self.top_passages(q, p, k + POOL_SLACK)[1].cpu()
        ranked = self.with_bm25(qids, ranked) if union else ranked
        return torch.cat([torch.tensor([self.pos[x][0] for x in qids])[:, None],
                          self.hard_negatives(qids, ranked, k, seed)], 1)                  # [Q, 1+k]

    def others_of_same_language(self, qids, seed):
        """For each query another query of the same language (a seeded shuffle of each language's queries, each
        reading its successor's text); a language with a single query keeps it (then the check says nothing)."""
        rng, other = random.Random(seed), {}
        for lang in sorted({self.lang(q) for q in qids}, key=str):
            group = [q for q in qids if self.lang(q) == lang]
            rng.shuffle(group)
            other.update(zip(group, group[1:] + group[:1]))
        return [other[q] for q in qids]

    def top_rate(self, c, k=1):
        """How often each scorer of c (Candidates) ranks p+ among the first k of C(q), strictly: fewer than k other
        candidates score as high or higher (a scorer that ties them all, as an untrained one may, gets no credit)
        -> {scorer: {"all" | lang: rate}}."""
        langs = [self.lang(q) for q in c.qids]
        rates = {}
        for name in ("de", "qg", "ce"):
            s = getattr(c, name)
            hit = ((s[:, 1:] >= s[:, :1]).sum(1) < k).float()                              # [Q]
            rates[name] = {x: hit[[i for i, y in enumerate(langs) if x in ("all", y)]].mean().item()
                           for x in ["all"] + sorted(set(langs), key=str)}
        return rates

    @staticmethod
    def trusted_languages(rates, teacher):
        """The languages where `teacher` ranks p+ first among the dev C(q) more often than the warm DE does and than it
        does reading another query (rates: teacher_rates' dict), sorted."""
        top, blind = rates["top1"], rates["blind_top1"]
        return sorted(x for x, v in top[teacher].items() if x != "all" and v > max(top["de"][x], blind[teacher][x]))

    def lacks(self, stage):
        """Why this data set cannot feed `stage` (one line), or None."""
        if stage in ("de", "qg", "ce", "teach", "kd", "align", "drdecr") and not self.train:
            return "no training queries (qrels/train.tsv)"
        if stage == "align" and len(self.ds.languages()) < 2:
            return "a single query language: nothing to align"
        if stage == "drdecr" and not any(q in (self.ds.translations or {}) for q in self.train):
            return "no training query has a translation (translations.jsonl)"
        if stage == "eval" and not self.eval_splits():
            return "no qrels/dev.tsv or qrels/test.tsv with a relevant passage"
        return None
