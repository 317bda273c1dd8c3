"""The whole method as one pipeline. `python train.py` runs every stage on the tiny synthetic benchmark on a CPU.

    python train.py                                   # tiny synthetic benchmark (written if absent), CPU
    python train.py --data DIR --preset gpu           # a BEIR-layout data set on a GPU
    python train.py --stages de,eval --de-steps 300   # chosen stages; every Config field is a flag
    python train.py --encode out/qg_kd.pt --split test --run run.trec   # search with a saved dual-encoder

Stages, in order (METHOD.md sections in brackets). Each writes its outputs under --out and skips an output that
exists, so killing the run and starting the same command again continues where it stopped (inside a stage, from
the last `*.partial.pt` checkpoint):
  tokenizer  WordPiece on the data set's own text (data.py)                              tokenizer.json
  pretrain   MLM encoder on unlabelled text + passages + train queries; denoising QG      pretrain.pt qg_pretrain.pt
  de         baseline DE: contrastive with BM25 negatives, then with its own negatives [1] de_bm25.pt de.pt
  qg         query generator: generation on train pairs, then the ranking fine-tune   [2] qg_gen.pt qg.pt
  ce         cross-encoder teacher: ranking loss with the same negatives              [3] ce.pt
  kd         each teacher distilled into a copy of the warm DE over its candidates   [4] kd_cache.pt ce_kd.pt qg_kd.pt
  align      qg_kd plus alignment on QG-written queries in other languages          [5] generated.pt qg_kd_align.pt
  drdecr     a pivot-language DE on oracle translations as teacher: relevance + token KD [6] de_pivot.pt drdecr.pt
  eval       every system and BM25 on dev and test                          runs/*.trec results.json results.md
"""
import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import data
import evaluate
import losses
import search
from model import DualEncoder, Encoder, ModelConfig, pad_batch
from teacher import CrossEncoder, QueryGenerator

STAGES = ["tokenizer", "pretrain", "de", "qg", "ce", "kd", "align", "drdecr", "eval"]
SYSTEMS = ["de", "ce_kd", "qg_kd", "qg_kd_align", "drdecr"]
METRICS = ["recall@10", "recall@100", "mrr@10", "ndcg@10"]


@dataclass
class Config:
    # networks: DE, CE and the QG encoder share one shape (METHOD.md 'Practical note' on init_std)
    vocab_size: int = 4000       # WordPiece vocabulary, specials and language tags included
    dim: int = 128               # channels
    n_layers: int = 2            # encoder blocks (DE, CE, QG encoder)
    n_dec_layers: int = 2        # QG decoder blocks
    n_heads: int = 4
    dropout: float = 0.1
    init_std: float = 0.02       # std of the token-embedding init (1.0, METHOD's note, broke MLM pre-training here)
    pooling: str = "cls"         # DE pooling: cls | mean
    normalize: bool = False      # L2-normalise DE embeddings (then set tau and tau_s ~ 0.05)
    max_len_q: int = 32          # query tokens, marker (or language tag and [EOS]) included
    max_len_p: int = 96          # passage tokens (title + text), marker included
    # optimisation: AdamW, linear warm-up then cosine decay, in every stage
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.1          # fraction of a stage's steps
    batch: int = 32              # queries (or sentences) per step
    rank_batch: int = 8          # queries per step in ranking and distillation stages (each with a candidate list)
    # stage lengths, in optimiser steps
    mlm_steps: int = 600
    denoise_steps: int = 500
    de_steps: int = 500          # per DE round (and the pivot DE of drdecr)
    qg_steps: int = 800          # QG generation training
    rank_steps: int = 300        # QG ranking fine-tune
    ce_steps: int = 600
    kd_steps: int = 300          # each distilled student (ce_kd, qg_kd, qg_kd_align, drdecr)
    # method
    tau: float = 1.0             # contrastive temperature
    negatives: int = 1           # hard negatives per query in DE training
    pool: int = 30               # mined candidates per query that negatives are drawn from
    rank_negs: int = 7           # negatives per query for the QG ranking step and the CE
    teacher_negatives: str = "de"  # negatives of the teachers: de (the warm DE's) | bm25 (claim 1)
    teacher_frac: float = 1.0    # share of each language's training queries the teachers see (claim 1)
    lambda_gen: float = 1.0      # weight of L_gen in the QG ranking loss
    tau_r: float = 1.0           # temperature of the QG ranking softmax
    kd_k: int = 12               # C(q) = p+ and the warm DE's top-K other passages
    alpha: float = 1.0           # weight of L_kd
    tau_t: float = 0.0           # teacher temperature; 0 = as sharp as the warm DE (losses.matched_temperature)
    tau_s: float = 1.0           # student temperature
    align: str = "dist"          # alignment loss: dist | kd | emb
    beta: float = 1.0            # weight of the alignment loss
    gen_temperature: float = 0.0  # QG sampling temperature for generated queries (0 = greedy; written once, ours)
    gamma: float = 1.0           # weight of DR.DECR's token-level representation KD
    mlm_prob: float = 0.15       # share of tokens masked in MLM pre-training
    noise: float = 0.3           # share of tokens dropped in spans by the QG's denoising pre-training
    eval_k: int = 100            # passages retrieved per query
    pivot: str = "en"            # language of the passages (their tag in the QG)
    seed: int = 0
    log_every: float = 5.0       # seconds between progress lines
    ckpt_every: int = 100        # steps between resumable checkpoints inside a stage


PRESETS = {
    "tiny": {},
    "gpu": dict(vocab_size=32000, dim=256, n_layers=4, n_dec_layers=4, batch=128, rank_batch=32, mlm_steps=20000,
                denoise_steps=10000, de_steps=5000, qg_steps=10000, rank_steps=3000, ce_steps=6000, kd_steps=5000,
                max_len_p=192, kd_k=32, ckpt_every=1000),
}


# ----------------------------------------------------------------------------- plumbing

def save(path, obj):
    """torch.save to a temp file, then rename: a checkpoint is complete or absent."""
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def write_text(path, text):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def log(stage, msg):
    print(f"[{stage}] {msg}", flush=True)


class Run:
    """What every stage reads: config, data set, tokenised text as padded tensors, device, output folder."""

    def __init__(self, cfg, ds, out):
        self.cfg, self.ds, self.out = cfg, ds, out
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def autocast(self):
        """bf16 autocast on CUDA, nothing on CPU: a fresh context for each use."""
        return torch.autocast("cuda", torch.bfloat16) if self.device.type == "cuda" else nullcontext()

    def path(self, name):
        return os.path.join(self.out, name)

    def tokenize(self):
        """Passages as [P] title text, queries as [Q] text (DE), QG targets as <2l> q [EOS]; positives per query."""
        cfg, ds = self.cfg, self.ds
        self.tok = data.load_tokenizer(self.path("tokenizer.json"))
        passages = data.encode(self.tok, [ds.passage_text(i) for i in range(len(ds.pids))], cfg.max_len_p, [data.P])
        self.P_ids, self.P_mask = pad_batch(passages)                                     # [N, Tp]
        self.P_tokens = [p[1:] for p in passages]
        self.qids = list(ds.queries)
        self.qrow = {q: i for i, q in enumerate(self.qids)}
        self.Q_tokens = data.encode(self.tok, ds.queries.values(), cfg.max_len_q - 2)   # room for a tag and [EOS]
        self.Q_ids, self.Q_mask = pad_batch([[data.Q] + q for q in self.Q_tokens])       # [Q, Tq]
        self.tag = {lang: self.tok.token_to_id(data.lang_tag(lang)) for lang in [*ds.languages(), cfg.pivot, *ds.unlabelled]}
        self.T_ids, self.T_mask = pad_batch([[self.tag.get(ds.lang.get(q), data.UNK)] + t + [data.EOS]
                                             for q, t in zip(self.qids, self.Q_tokens)])  # [Q, Tq]
        row = {p: i for i, p in enumerate(ds.pids)}
        self.pos = {q: [row[p] for p, s in rel.items() if s > 0] for split in ds.qrels.values() for q, rel in split.items()}
        self.train = [q for q in ds.qrels.get("train", {}) if self.pos[q]]

    def bm25(self):
        """The BM25 index of the whole passages (the networks see only their first max_len_p tokens), built once."""
        if not hasattr(self, "_bm25"):
            texts = [self.ds.passage_text(i) for i in range(len(self.ds.pids))]
            self._bm25 = search.BM25(data.encode(self.tok, texts, 1 << 30))
        return self._bm25

    def model_config(self):
        c = self.cfg
        return ModelConfig(vocab_size=self.tok.get_vocab_size(), dim=c.dim, n_layers=c.n_layers, n_heads=c.n_heads,
                           max_len=c.max_len_q + c.max_len_p, dropout=c.dropout, pooling=c.pooling,
                           normalize=c.normalize, init_std=c.init_std, n_dec_layers=c.n_dec_layers)

    def new(self, cls, init=None):
        """A fresh model on the device; `init` names a checkpoint to start from: its whole state_dict when it holds
        a model of the same class (a DE copied for distillation), else its encoder (pretrain.pt's MLM encoder)."""
        torch.manual_seed(self.cfg.seed)
        m = cls(self.model_config())
        if init:
            ck = load(self.path(init))
            (m.load_state_dict if ck.get("cls") == cls.__name__ else m.load_encoder)(ck["model"])
        return m.to(self.device)

    def restore(self, cls, name):
        """A saved model in eval mode; `name` is relative to the output folder (or an absolute path)."""
        ck = load(self.path(name))
        m = cls(ModelConfig(**ck["config"]))
        m.load_state_dict(ck["model"])
        return m.to(self.device).eval()

    def keep(self, model, name):
        save(self.path(name), {"model": model.state_dict(), "config": dataclasses.asdict(model.cfg),
                               "cls": type(model).__name__})

    def todo(self, stage, name):
        """True when output `name` is still to be made; says so when it is skipped."""
        if os.path.exists(self.path(name)):
            log(stage, f"{name} exists, skipped")
            return False
        return True


def trim(ids, mask):
    """Cut a padded batch to its longest sequence."""
    T = max(1, int(mask.sum(1).max()))
    return ids[:, :T], mask[:, :T]


def rows(run, ids, mask, index):
    """Rows `index` of a padded matrix, trimmed and moved to the device."""
    i, m = trim(ids[index], mask[index])
    return i.to(run.device), m.to(run.device)


def fit(run, name, model, steps, step, out, key=None):
    """The one training loop of every stage: `step(gen) -> (loss, logs)` is called `steps` times, then the model is
    saved as `out`.

    AdamW, linear warm-up then cosine decay, gradient clipping at 1.0, a progress line every cfg.log_every seconds,
    and every cfg.ckpt_every steps a checkpoint `<name>.partial.pt` (model, optimiser, step, random states) that a
    restarted run resumes from, so an interrupted stage ends with the same weights as an uninterrupted one (on CPU;
    CUDA kernels are not bitwise deterministic). `key` seeds the batches and dropout (default: the name): stages
    with one key draw the same batches, so that two students differ by their losses only.
    """
    cfg = run.cfg
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    seed = cfg.seed * 1000 + sum(map(ord, key or name))
    gen = torch.Generator().manual_seed(seed)  # batches
    torch.manual_seed(seed)                    # dropout
    partial, start = run.path(f"{name}.partial.pt"), 0
    if os.path.exists(partial):
        ck = load(partial)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["rng"])
        if ck["cuda_rng"]:
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        start = ck["step"]
        log(name, f"resuming at step {start}/{steps}")
    warm = max(1, int(cfg.warmup * steps))
    lr_at = lambda i: cfg.lr * ((i + 1) / warm if i < warm else 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm))))  # noqa: E731
    model.train()
    t0 = last = time.time()
    for i in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(i)
        with run.autocast():
            loss, logs = step(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        now = time.time()
        if now - last > cfg.log_every or i + 1 == steps:
            rate = (i + 1 - start) / (now - t0)
            extra = "".join(f" {k} {v:.3f}" for k, v in logs.items())
            log(name, f"step {i + 1}/{steps} loss {loss.item():.4f}{extra} | {rate:.1f} steps/s | "
                      f"eta {(steps - i - 1) / rate:.0f}s")
            last = now
        if (i + 1) % cfg.ckpt_every == 0 and i + 1 < steps:
            save(partial, {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                           "rng": torch.get_rng_state(), "step": i + 1,
                           "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})
    run.keep(model.eval(), out)
    if os.path.exists(partial):
        os.remove(partial)


def draw(gen, items, k):
    """k items drawn with replacement."""
    return [items[i] for i in torch.randint(len(items), (k,), generator=gen).tolist()]


def positive(run, gen, q):
    """One of the query's positive passages (corpus row), drawn at random."""
    return run.pos[q][int(torch.randint(len(run.pos[q]), (1,), generator=gen))]


def rows_of(run, qids):
    """Row of each query in the query matrices (Q_ids, T_ids)."""
    return [run.qrow[q] for q in qids]


def inner(run, q, p):
    """s(q, p) = q p^T in float32 even under bf16 autocast: [B, C] x [M, C] -> [B, M] (logits of the losses)."""
    with torch.autocast(run.device.type, enabled=False):
        return q.float() @ p.float().T


def pad_dev(run, seqs):
    """pad_batch, moved to the device."""
    return tuple(t.to(run.device) for t in pad_batch(seqs))


@torch.no_grad()
def embed(run, de, ids, mask, batch=256):
    """DE embeddings of padded sequences, in eval mode: [n, C] float32 on the device."""
    de.eval()
    out = []
    for s in range(0, len(ids), batch):
        with run.autocast():
            out.append(de.encode(*rows(run, ids, mask, slice(s, s + batch))).float())
    return torch.cat(out)


def de_ranking(run, de, qids, k):
    """The DE's top-k passages for each query: [Q, k] corpus rows."""
    p = embed(run, de, run.P_ids, run.P_mask)
    q = embed(run, de, *query_side(run, qids))
    return search.exact_topk(q, p, min(k, len(p)))[1].cpu()


def bm25_ranking(run, queries, k):
    """BM25's top-k passages for `queries` (lists of token ids): [Q, k] corpus rows, -1 where a passage shares no
    token with the query."""
    scores, ids = run.bm25().search(queries, min(k, len(run.P_tokens)))
    return ids.masked_fill(scores <= 0, -1)


def q_tokens(run, qids):
    return [run.Q_tokens[run.qrow[q]] for q in qids]


def negatives(run, qids, ranked, size, seed):
    """Per query the first `size` ranked passages that are not its positives: [Q, size]; when a ranking runs short
    (BM25 on a query that shares no token with any passage) random passages fill it."""
    rng, out = random.Random(seed), []
    for q, row in zip(qids, ranked.tolist()):
        pool = [p for p in row if p >= 0 and p not in run.pos[q]][:size]
        while len(pool) < size:
            p = rng.randrange(len(run.P_tokens))
            if p not in run.pos[q] and p not in pool:
                pool.append(p)
        out.append(pool)
    return torch.tensor(out)


def teacher_queries(run):
    """The training queries the teachers see: the first teacher_frac of each language's, in a seeded order."""
    rng, out = random.Random(run.cfg.seed), []
    for lang in run.ds.languages():
        qs = [q for q in run.train if run.ds.lang[q] == lang]
        rng.shuffle(qs)
        out += qs[:math.ceil(run.cfg.teacher_frac * len(qs))]
    return sorted(out, key=run.qrow.get)


def query_side(run, qids):
    """DE inputs ([Q] q) of the queries `qids`: ids, mask [len(qids), Tq]."""
    return run.Q_ids[rows_of(run, qids)], run.Q_mask[rows_of(run, qids)]


def other_positives(run, qids, cand):
    """[B, M] bool, True where candidate cand[j] (corpus rows, [M]) is a positive of qids[i]."""
    return torch.tensor([[c in run.pos[q] for c in cand.tolist()] for q in qids], device=run.device)


# ----------------------------------------------------------------------------- stages 1-2: tokenizer, pre-training

def stage_tokenizer(run):
    if run.todo("tokenizer", "tokenizer.json"):
        langs = run.ds.languages() + [run.cfg.pivot] + list(run.ds.unlabelled)
        tok = data.train_tokenizer(data.tokenizer_texts(run.ds), langs, run.cfg.vocab_size)
        tok.save(run.path("tokenizer.json") + ".tmp")
        os.replace(run.path("tokenizer.json") + ".tmp", run.path("tokenizer.json"))
        log("tokenizer", f"{tok.get_vocab_size()} tokens")
    run.tokenize()


def pretrain_texts(run):
    """(language, token ids) of every text a model may see before its task: unlabelled sentences in every
    language, passages (pivot) and training queries."""
    ds, cfg, out = run.ds, run.cfg, []
    for lang in sorted(ds.unlabelled):
        out += [(lang, t) for t in data.encode(run.tok, ds.unlabelled[lang], cfg.max_len_q - 2)]
    out += [(cfg.pivot, t) for t in run.P_tokens]
    out += [(ds.lang[q], t) for q, t in zip(run.train, q_tokens(run, run.train))]
    return [(lang, t) for lang, t in out if t and lang in run.tag]


def stage_pretrain(run):
    """MLM encoder (the start of every later model) and the QG's denoising pre-training (span corruption)."""
    cfg, texts = run.cfg, pretrain_texts(run)
    if run.todo("pretrain", "pretrain.pt"):
        enc = run.new(Encoder)

        def step(gen):  # predict the picked tokens of [CLS] text from the corrupted input
            ids, mask = pad_batch([[data.CLS] + t for _, t in draw(gen, texts, cfg.batch)])
            x, picked = data.mlm_mask(ids, mask, cfg.mlm_prob, enc.cfg.vocab_size, gen)
            ids, x, mask, picked = (t.to(run.device) for t in (ids, x, mask, picked))
            h = enc(x, mask)[picked]                                                   # [n, C]
            return F.cross_entropy(enc.mlm_logits(h).float(), ids[picked]), {}
        fit(run, "pretrain", enc, cfg.mlm_steps, step, "pretrain.pt")
    if run.todo("pretrain", "qg_pretrain.pt"):
        qg = run.new(QueryGenerator, "pretrain.pt")

        def step(gen):  # input [P] + corrupted text, target <2l> [MASK] span [MASK] span ... [EOS]
            batch = draw(gen, texts, cfg.batch)
            src, tgt = zip(*(data.span_corrupt(t, cfg.noise, gen) for _, t in batch))
            tgt = [[run.tag[lang]] + t + [data.EOS] for (lang, _), t in zip(batch, tgt)]
            return qg.loss(*pad_dev(run, [[data.P] + s for s in src]), *pad_dev(run, tgt)), {}
        fit(run, "denoise", qg, cfg.denoise_steps, step, "qg_pretrain.pt")


# ----------------------------------------------------------------------------- stage 3: the dual-encoder

def train_de(run, name, init, q_ids, q_mask, qids, pool):
    """Contrastive DE training (METHOD.md 1): each step B queries, each with its positive and `negatives` hard
    negatives drawn from its `pool` row; every passage of the batch is a candidate of every query, except the
    other positives of a query (duplicates, false negatives), which are masked.
    q_ids/q_mask: the query side, one row per entry of `qids` ([Q] marker first)."""
    cfg = run.cfg
    de = run.new(DualEncoder, init)
    B, h = cfg.batch, cfg.negatives

    def step(gen):
        b = torch.randint(len(qids), (B,), generator=gen)
        batch = [qids[i] for i in b.tolist()]
        pos = torch.tensor([positive(run, gen, q) for q in batch])
        neg = pool[b[:, None], torch.randint(pool.size(1), (B, h), generator=gen)]            # [B, h]
        cand = torch.cat([pos, neg.flatten()])                                                 # [B(1+h)]
        s = inner(run, de.encode(*rows(run, q_ids, q_mask, b)), de.encode(*rows(run, run.P_ids, run.P_mask, cand)))  # [B, M]
        target = torch.arange(B, device=run.device)
        valid = ~other_positives(run, batch, cand)
        valid[target, target] = True
        loss, acc = losses.contrastive_loss(s, target, valid, cfg.tau)
        return loss, {"acc": acc.item()}
    fit(run, name, de, cfg.de_steps, step, f"{name}.pt")


def stage_de(run):
    """Round 1 with BM25 negatives, round 2 (from round 1) with the round-1 DE's own negatives."""
    cfg, train = run.cfg, run.train
    if run.todo("de", "de_bm25.pt"):
        pool = negatives(run, train, bm25_ranking(run, q_tokens(run, train), cfg.pool + 5), cfg.pool, cfg.seed)
        train_de(run, "de_bm25", "pretrain.pt", *query_side(run, train), train, pool)
    if run.todo("de", "de.pt"):
        pool = negatives(run, train, de_ranking(run, run.restore(DualEncoder, "de_bm25.pt"), train, cfg.pool + 5),
                         cfg.pool, cfg.seed)
        train_de(run, "de", "de_bm25.pt", *query_side(run, train), train, pool)


# ----------------------------------------------------------------------------- stages 4-5: the teachers

def teacher_pool(run, qids):
    """Negatives the teachers train on: the warm DE's top passages, or BM25's (cfg.teacher_negatives)."""
    cfg = run.cfg
    if cfg.teacher_negatives == "bm25":
        ranked = bm25_ranking(run, q_tokens(run, qids), cfg.pool + 5)
    else:
        ranked = de_ranking(run, run.restore(DualEncoder, "de.pt"), qids, cfg.pool + 5)
    return negatives(run, qids, ranked, cfg.pool, cfg.seed)


def rank_batch(run, gen, qids, pool):
    """B = rank_batch queries, each with its positive and rank_negs negatives drawn from its pool row:
    -> (indices into qids [B], candidates [B, 1 + rank_negs] corpus rows, positive in column 0)."""
    B, n = run.cfg.rank_batch, run.cfg.rank_negs
    b = torch.randint(len(qids), (B,), generator=gen)
    pos = [positive(run, gen, qids[i]) for i in b.tolist()]
    pick = torch.rand(B, pool.size(1), generator=gen).argsort(1)[:, :n]                   # n distinct per row
    return b, torch.cat([torch.tensor(pos)[:, None], pool[b[:, None], pick]], 1)


def qg_scores(run, qg, tgt, cand):
    """r(q, p) of the QG over candidates cand [Q, k] (corpus rows) for the queries tgt = (ids, mask) [Q, T]
    (<2l> q [EOS], on the device) -> [Q, k]. Each distinct passage of the batch is encoded once."""
    uniq, inv = cand.unique(return_inverse=True)
    return qg.score(*rows(run, run.P_ids, run.P_mask, uniq), *tgt, inv.to(run.device))


def targets(run, qids):
    """QG targets <2l> q [EOS] of the queries `qids`, on the device."""
    return rows(run, run.T_ids, run.T_mask, rows_of(run, qids))


def ce_inputs(run, qids, cand):
    """[CLS] q [SEP] p for every (query, candidate) pair: ids, mask [Q*k, T] on the device."""
    seqs = [[data.CLS] + q + [data.SEP] + run.P_tokens[p] for q, row in zip(q_tokens(run, qids), cand.tolist()) for p in row]
    return pad_dev(run, seqs)


def stage_qg(run):
    """Generation training on (q, p+) pairs in every language, then the ranking fine-tune (METHOD.md 2)."""
    cfg, qids = run.cfg, teacher_queries(run)
    if run.todo("qg", "qg_gen.pt"):
        qg = run.new(QueryGenerator, "qg_pretrain.pt")

        def step(gen):
            batch = draw(gen, qids, cfg.batch)
            pos = [positive(run, gen, q) for q in batch]
            return qg.loss(*rows(run, run.P_ids, run.P_mask, pos), *targets(run, batch)), {}
        fit(run, "qg_gen", qg, cfg.qg_steps, step, "qg_gen.pt")
    if run.todo("qg", "qg.pt"):
        qg, pool = run.new(QueryGenerator, "qg_gen.pt"), teacher_pool(run, qids)

        def step(gen):
            b, cand = rank_batch(run, gen, qids, pool)
            r = qg_scores(run, qg, targets(run, [qids[i] for i in b.tolist()]), cand)           # [B, 1+n]
            return losses.qg_rank_loss(r, -r[:, 0].mean(), tau_r=cfg.tau_r, lambda_gen=cfg.lambda_gen), \
                {"acc": (r.argmax(1) == 0).float().mean().item()}
        fit(run, "qg_rank", qg, cfg.rank_steps, step, "qg.pt")


def stage_ce(run):
    """The cross-encoder teacher: listwise ranking loss over the positive and the same kind of negatives (METHOD.md 3)."""
    cfg, qids = run.cfg, teacher_queries(run)
    if run.todo("ce", "ce.pt"):
        ce, pool = run.new(CrossEncoder, "pretrain.pt"), teacher_pool(run, qids)

        def step(gen):
            b, cand = rank_batch(run, gen, qids, pool)
            c = ce(*ce_inputs(run, [qids[i] for i in b.tolist()], cand)).view(cand.shape)   # [B, 1+n]
            return losses.rank_loss(c), {"acc": (c.argmax(1) == 0).float().mean().item()}
        fit(run, "ce", ce, cfg.ce_steps, step, "ce.pt")


# ----------------------------------------------------------------------------- stages 6-8: distillation

@torch.no_grad()
def in_chunks(run, stage, n, size, fn):
    """fn(slice) for consecutive slices of range(n), results concatenated; progress lines while it runs."""
    out, t0, last = [], time.time(), time.time()
    for s in range(0, n, size):
        with run.autocast():
            out.append(fn(slice(s, s + size)).cpu())
        if time.time() - last > run.cfg.log_every:
            last = time.time()
            log(stage, f"{min(n, s + size)}/{n} | eta {(n - s - size) * (last - t0) / (s + size):.0f}s")
    return torch.cat(out)


def scored_candidates(run, qids):
    """C(q) = p+ (column 0) and the warm DE's top kd_k other passages, with every scorer's scores on it:
    {qids, cand [Q, 1+K], de, qg, ce [Q, 1+K]}. The teachers' scores are what distillation learns from."""
    cfg, de = run.cfg, run.restore(DualEncoder, "de.pt")
    q, p = embed(run, de, *query_side(run, qids)), embed(run, de, run.P_ids, run.P_mask)
    ranked = search.exact_topk(q, p, min(cfg.kd_k + 5, len(p)))[1].cpu()                  # as de_ranking, embedded once
    cand = torch.cat([torch.tensor([run.pos[x][0] for x in qids])[:, None],
                      negatives(run, qids, ranked, cfg.kd_k, cfg.seed)], 1)
    qg, ce = run.restore(QueryGenerator, "qg.pt"), run.restore(CrossEncoder, "ce.pt")
    log("kd", f"scoring {cand.numel()} (query, passage) pairs with both teachers")
    return {"qids": qids, "cand": cand,
            "de": torch.einsum("qc,qmc->qm", q, p[cand.to(run.device)]).cpu(),
            "qg": in_chunks(run, "kd", len(qids), 16, lambda s: qg_scores(run, qg, targets(run, qids[s]), cand[s]).float()),
            "ce": in_chunks(run, "kd", len(qids), 16, lambda s: ce(*ce_inputs(run, qids[s], cand[s])).view(-1, cand.size(1)).float())}


def first_rate(run, c):
    """How often each scorer ranks p+ first among C(q), strictly above every other candidate (a scorer that ties
    them all, as an untrained one may, gets no credit): {scorer: {"all" | lang: rate}}."""
    langs = [run.ds.lang[q] for q in c["qids"]]
    out = {}
    for name in ("de", "qg", "ce"):
        top1 = (c[name][:, 0] > c[name][:, 1:].max(1).values).float()
        out[name] = {x: top1[[i for i, y in enumerate(langs) if x in ("all", y)]].mean().item()
                     for x in ["all"] + sorted(set(langs))}
    return out


def stage_kd_cache(run):
    """Teacher scores on the training queries' candidates, computed once (kd_cache.pt), and the same on the dev
    queries to see how well each teacher ranks held-out queries (teachers.json)."""
    if run.todo("kd", "kd_cache.pt"):
        save(run.path("kd_cache.pt"), scored_candidates(run, run.train))
    dev = [q for q in run.ds.qrels.get("dev", {}) if run.pos[q]]
    if dev and run.todo("kd", "teachers.json"):
        rates = {"train": first_rate(run, load(run.path("kd_cache.pt"))), "dev": first_rate(run, scored_candidates(run, dev))}
        write_text(run.path("teachers.json"), json.dumps(rates, indent=1) + "\n")
        for name, r in rates["dev"].items():
            log("kd", f"dev: {name} ranks p+ first among C(q) for " + " ".join(f"{x} {v:.2f}" for x, v in r.items()))


def teacher_tau(run, teacher, kd):
    """cfg.tau_t, or when it is 0 the temperature that makes the teacher's scores on the training candidates as
    sharp as the warm DE's (one rule for every teacher; their scales differ by orders of magnitude)."""
    tau = run.cfg.tau_t or losses.matched_temperature(teacher, kd["de"], tau_s=run.cfg.tau_s)
    log("kd", f"teacher temperature {tau:.3g}")
    return tau


def distil(run, name, teacher, extra=None):
    """A copy of the warm DE trained with L = L_ce + alpha * L_kd (METHOD.md 4) [+ extra]: each step B training
    queries with their candidates C(q); L_ce is the contrastive loss over every candidate of the batch, L_kd the
    KL from teacher [Q, 1+K] to the student over each query's own C(q).
    extra(de, b, hq, q_mask, p, own) -> (loss, logs) adds a term: b the batch rows, hq the query token states
    [B, Tq, C], p the candidate embeddings [B, 1+K, C], own the student's scores s(q, C(q)) [B, 1+K]."""
    cfg, kd = run.cfg, load(run.path("kd_cache.pt"))
    qids, cand = kd["qids"], kd["cand"]
    q_ids, q_mask = query_side(run, qids)
    tau_t = teacher_tau(run, teacher, kd)
    de, B, M = run.new(DualEncoder, "de.pt"), cfg.rank_batch, cand.size(1)
    ar = torch.arange(B, device=run.device)

    def step(gen):
        b = torch.randint(len(qids), (B,), generator=gen)
        c = cand[b].flatten()                                                                 # [B*M]
        qi, qm = rows(run, q_ids, q_mask, b)
        hq = de.token_states(qi, qm)                                                          # [B, Tq, C]
        p = de.encode(*rows(run, run.P_ids, run.P_mask, c))                                   # [B*M, C]
        s = inner(run, de.pool(hq, qm), p)                                                    # [B, B*M]
        valid = ~other_positives(run, [qids[i] for i in b.tolist()], c)
        valid[ar, ar * M] = True
        l_ce, acc = losses.contrastive_loss(s, ar * M, valid, cfg.tau)
        own = s.view(B, B, M)[ar, ar]                                                         # [B, M] s(q_i, C(q_i))
        l_kd = losses.kd_loss(own, teacher[b].to(run.device), tau_s=cfg.tau_s, tau_t=tau_t)
        loss, logs = l_ce + cfg.alpha * l_kd, {"ce": l_ce.item(), "kd": l_kd.item(), "acc": acc.item()}
        if extra:
            l_x, more = extra(de, b, hq, qm, p.view(B, M, -1), own)
            loss, logs = loss + l_x, {**logs, **more}
        return loss, logs
    fit(run, name, de, cfg.kd_steps, step, f"{name}.pt", key="distil")


def stage_kd(run):
    stage_kd_cache(run)
    for teacher in ("ce", "qg"):
        if run.todo("kd", f"{teacher}_kd.pt"):
            distil(run, f"{teacher}_kd", load(run.path("kd_cache.pt"))[teacher])


def stage_align(run):
    """qg_kd plus alignment (METHOD.md 5): for each training query the QG writes a query for its positive in
    another language (greedy or sampled, once), and cfg.align says how the student is made to treat both alike."""
    cfg, ds = run.cfg, run.ds
    if not run.todo("align", "qg_kd_align.pt"):
        return
    kd = load(run.path("kd_cache.pt"))
    qids, cand = kd["qids"], kd["cand"]
    if not os.path.exists(run.path("generated.pt")):
        rng, langs = random.Random(cfg.seed), ds.languages()
        target = [rng.choice([x for x in langs if x != ds.lang[q]]) for q in qids]
        qg, g = run.restore(QueryGenerator, "qg.pt"), torch.Generator().manual_seed(cfg.seed)
        tags = torch.tensor([run.tag[x] for x in target])
        pos = cand[:, 0]

        def write(s):
            ids, mask = qg.generate(*rows(run, run.P_ids, run.P_mask, pos[s]), tags[s].to(run.device),
                                    cfg.max_len_q - 2, data.EOS, cfg.gen_temperature, 0, g)
            return F.pad(ids.masked_fill(~mask, data.PAD), (0, cfg.max_len_q - 2 - ids.size(1)))
        gen_ids = in_chunks(run, "align", len(qids), 64, write)                             # [Q, max_len_q - 2]
        tokens = [[t for t in row if t != data.PAD] for row in gen_ids.tolist()]
        save(run.path("generated.pt"), {"qids": qids, "lang": target, "tokens": tokens})
        for x in langs:  # a few examples per language, for the reader of the log
            for i in [i for i, t in enumerate(target) if t == x][:2]:
                log("align", f"{x}: {run.tok.decode(tokens[i])!r} <- {ds.queries[qids[i]]!r} ({ds.lang[qids[i]]})")
    written = load(run.path("generated.pt"))
    g_ids, g_mask = pad_batch([[data.Q] + t for t in written["tokens"]])
    if cfg.align == "kd":  # teacher scores of the generated queries over C(q), once
        qg = run.restore(QueryGenerator, "qg.pt")
        tgt_ids, tgt_mask = pad_batch([[run.tag[x]] + t + [data.EOS] for x, t in zip(written["lang"], written["tokens"])])
        t_gen = in_chunks(run, "align", len(qids), 16, lambda s: qg_scores(run, qg, rows(run, tgt_ids, tgt_mask, s), cand[s]).float())
        tau_gen = teacher_tau(run, kd["qg"], kd)
    same_pos = cand[:, 0]

    def extra(de, b, hq, qm, p, own):
        eg = de.encode(*rows(run, g_ids, g_mask, b))                                          # [B, C]
        if cfg.align == "emb":  # q'_i against every q_j of the batch; q_j about the same passage is masked
            pos = same_pos[b]
            mask = (pos[:, None] != pos[None, :]).to(run.device) | torch.eye(len(b), dtype=torch.bool, device=run.device)
            l_a = losses.align_emb_loss(de.pool(hq, qm), eg, cfg.tau, mask)
        else:
            with torch.autocast(run.device.type, enabled=False):
                s_g = torch.einsum("bc,bmc->bm", eg.float(), p.float())                       # [B, M] s(q', C(q))
            l_a = (losses.align_dist_loss(own, s_g, tau=cfg.tau_s) if cfg.align == "dist" else
                   losses.kd_loss(s_g, t_gen[b].to(run.device), tau_s=cfg.tau_s, tau_t=tau_gen))
        return cfg.beta * l_a, {"align": l_a.item()}
    distil(run, "qg_kd_align", kd["qg"], extra)


def stage_drdecr(run):
    """DR.DECR (METHOD.md 6): a pivot-language DE trained on the oracle translations of the training queries
    teaches a copy of the warm DE by relevance KD over C(q) and token-level representation KD."""
    cfg, ds = run.cfg, run.ds
    kd = load(run.path("kd_cache.pt"))
    trans = data.encode(run.tok, [ds.translations[q] for q in kd["qids"]], cfg.max_len_q - 1)
    t_ids, t_mask = pad_batch([[data.Q] + t for t in trans])                               # [Q, Tq]
    if run.todo("drdecr", "de_pivot.pt"):
        pool = negatives(run, kd["qids"], bm25_ranking(run, trans, cfg.pool + 5), cfg.pool, cfg.seed)
        train_de(run, "de_pivot", "pretrain.pt", t_ids, t_mask, kd["qids"], pool)
    if not run.todo("drdecr", "drdecr.pt"):
        return
    teacher = run.restore(DualEncoder, "de_pivot.pt")
    tq = embed(run, teacher, t_ids, t_mask)                                                 # [Q, C]
    tp = embed(run, teacher, run.P_ids, run.P_mask)                                         # [N, C]
    scores = torch.einsum("qc,qmc->qm", tq, tp[kd["cand"].to(run.device)]).cpu()            # [Q, 1+K]

    def extra(de, b, hq, qm, p, own):
        with torch.no_grad():
            ti, tm = rows(run, t_ids, t_mask, b)
            ht = teacher.token_states(ti, tm)                                                 # [B, Tt, C]
        l_tok = losses.token_kd_loss(hq, qm, ht, tm)
        return cfg.gamma * l_tok, {"tok": l_tok.item()}
    distil(run, "drdecr", scores, extra)


# ----------------------------------------------------------------------------- stage 9: evaluation

def retrieve(run, de, splits):
    """Exact search over the whole corpus with a DE for the queries of each split -> {split: (scores, rows)}."""
    p = embed(run, de, run.P_ids, run.P_mask)                                               # [N, C], once
    k = min(run.cfg.eval_k, len(p))
    return {split: search.exact_topk(embed(run, de, *query_side(run, qids)), p, k) for split, qids in splits.items()}


def eval_splits(run):
    """{split: query ids} of dev and test, where they exist and judge some passage relevant."""
    return {s: list(run.ds.qrels[s]) for s in ("dev", "test")
            if s in run.ds.qrels and any(run.pos[q] for q in run.ds.qrels[s])}


def stage_eval(run):
    """Every system (and BM25) on dev and test: runs/<system>.<split>.trec, results.json, results.md."""
    cfg, ds = run.cfg, run.ds
    os.makedirs(run.path("runs"), exist_ok=True)
    metrics = METRICS + (["r@2kt", "r@5kt"] if ds.answers else [])
    passages = {pid: ds.passage_text(i) for i, pid in enumerate(ds.pids)} if ds.answers else None
    splits = eval_splits(run)
    results = {s: {} for s in splits}
    for name in ["bm25"] + [s for s in SYSTEMS if os.path.exists(run.path(f"{s}.pt"))]:
        if name == "bm25":
            found = {s: run.bm25().search(q_tokens(run, qids), min(cfg.eval_k, len(ds.pids))) for s, qids in splits.items()}
        else:
            found = retrieve(run, run.restore(DualEncoder, f"{name}.pt"), splits)
        for split, (scores, ids) in found.items():
            path = run.path(f"runs/{name}.{split}.trec")
            search.write_trec(path, splits[split], ds.pids, scores.cpu(), ids.cpu(), name)
            res = evaluate.evaluate(ds.qrels[split], evaluate.read_run(path), metrics, ds.lang, ds.answers, passages)
            results[split][name] = {"all": res["all"], "per_lang": res["per_lang"]}
            log("eval", f"{split} {name:12s} " + " ".join(f"{m} {res['all'][m]:.3f}" for m in metrics))
    split = "test" if "test" in results else "dev"
    out = {"config": dataclasses.asdict(cfg), "data": ds.root, "split": split, "systems": results[split],
           "dev": results.get("dev", {})}
    write_text(run.path("results.json"), json.dumps(out, indent=1) + "\n")
    write_text(run.path("results.md"), results_markdown(run, results[split], metrics, split))
    print(open(run.path("results.md"), encoding="utf-8").read())


def results_markdown(run, systems, metrics, split):
    """One table per metric: systems x (all, each language with its number of training queries); then, when the kd
    stage measured them, how often each teacher ranks p+ first among the warm DE's candidates of dev queries."""
    langs = sorted({x for r in systems.values() for x in r["per_lang"]})
    n_train = {x: sum(run.ds.lang[q] == x for q in run.train) for x in langs}
    head = ["| system | all | " + " | ".join(f"{x} ({n_train[x]})" for x in langs) + " |", "|---" * (2 + len(langs)) + "|"]
    row = lambda name, values: f"| {name} | " + " | ".join(f"{values.get(x, float('nan')):.3f}" for x in ["all"] + langs) + " |"  # noqa: E731
    lines = [f"# Results on {run.ds.root} ({split})", ""]
    for m in metrics:
        lines += [f"## {m}", "", *head]
        lines += [row(name, {"all": r["all"][m], **{x: v[m] for x, v in r["per_lang"].items()}}) for name, r in systems.items()]
        lines.append("")
    if os.path.exists(run.path("teachers.json")):
        lines += ["## teachers: share of dev queries whose positive each ranks first among C(q) (p+ and the warm DE's "
                  f"top {run.cfg.kd_k})", "", *head]
        lines += [row(name, r) for name, r in json.load(open(run.path("teachers.json")))["dev"].items()] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command line

RUNNERS = {"tokenizer": stage_tokenizer, "pretrain": stage_pretrain, "de": stage_de, "qg": stage_qg, "ce": stage_ce,
           "kd": stage_kd, "align": stage_align, "drdecr": stage_drdecr, "eval": stage_eval}


NEEDS = {"de": ["pretrain.pt"], "qg": ["qg_pretrain.pt", "de.pt"], "ce": ["pretrain.pt", "de.pt"],
         "kd": ["de.pt", "qg.pt", "ce.pt"], "align": ["kd_cache.pt", "qg.pt"], "drdecr": ["kd_cache.pt", "pretrain.pt"]}
MAKER = {"pretrain.pt": "pretrain", "qg_pretrain.pt": "pretrain", "de.pt": "de", "qg.pt": "qg", "ce.pt": "ce",
         "kd_cache.pt": "kd"}
CHOICES = {"pooling": ("cls", "mean"), "align": ("dist", "kd", "emb"), "teacher_negatives": ("de", "bm25")}


class Stop(Exception):
    """A problem the user can fix, reported as one line `error: ...` and exit status 1."""


def check_config(cfg):
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise Stop(f"--{name.replace('_', '-')} {getattr(cfg, name)!r}: choose from {', '.join(allowed)}")
    rules = [(cfg.dim % cfg.n_heads == 0, "--dim must be a multiple of --n-heads"),
             (0 < cfg.teacher_frac <= 1, "--teacher-frac must be in (0, 1]"),
             (cfg.max_len_q >= 3 and cfg.max_len_p >= 2, "--max-len-q must be >= 3 and --max-len-p >= 2"),
             (1 <= cfg.rank_negs <= cfg.pool and cfg.negatives <= cfg.pool, "--rank-negs and --negatives must be <= --pool"),
             (min(cfg.mlm_steps, cfg.denoise_steps, cfg.de_steps, cfg.qg_steps, cfg.rank_steps, cfg.ce_steps,
                  cfg.kd_steps) >= 0, "step counts must be >= 0")]
    for ok, problem in rules:
        if not ok:
            raise Stop(problem)


def skip_reason(run, stage):
    """Why a stage cannot run on this data set, or None."""
    ds = run.ds
    if stage in ("de", "qg", "ce", "kd", "align", "drdecr") and not run.train:
        return "no training queries (qrels/train.tsv)"
    if stage == "align" and len(ds.languages()) < 2:
        return "a single query language: nothing to align"
    if stage == "drdecr" and not (ds.translations and all(q in ds.translations for q in run.train)):
        return "no oracle translation of every training query (translations.jsonl)"
    if stage == "eval" and not eval_splits(run):
        return "no qrels/dev.tsv or qrels/test.tsv with a relevant passage"
    return None


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="BEIR-layout data set (default: data/tiny, written by data.py synth if absent)")
    ap.add_argument("--out", default="out", help="outputs and checkpoints (default: out)")
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny", help="defaults: tiny (CPU) or gpu")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, any of {STAGES}")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core)")
    ap.add_argument("--encode", metavar="CKPT", help="only search: a DE saved by a run (its folder gives the tokenizer "
                    "and config) over --data's corpus, for the queries of --split")
    ap.add_argument("--split", default="test", help="with --encode: the queries to search")
    ap.add_argument("--run", default="run.trec", help="with --encode: the TREC run to write")
    group = ap.add_argument_group("config (every field of Config, commented in train.py; defaults from --preset)")
    for f in dataclasses.fields(Config):
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if f.type is bool else f.type
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                           metavar=f.type.__name__.upper())
    args = ap.parse_args(argv)
    cfg = Config(**PRESETS[args.preset])
    cfg = dataclasses.replace(cfg, **{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                                      if getattr(args, f.name) is not None})
    stages = args.stages.split(",")
    if any(s not in STAGES for s in stages):
        ap.error(f"--stages: unknown stage in {args.stages!r}; choose from {STAGES}")
    return args, cfg, stages


def encode_only(args, ds):
    """--encode: a TREC run of one split's queries with a saved DE, tokenised as in the run that trained it."""
    out = os.path.dirname(os.path.abspath(args.encode))
    for path in (args.encode, os.path.join(out, "config.json"), os.path.join(out, "tokenizer.json")):
        if not os.path.exists(path):
            raise Stop(f"{path}: not found (--encode takes a checkpoint in the output folder of a run)")
    if args.split not in ds.qrels:
        raise Stop(f"{ds.root}/qrels/{args.split}.tsv: not found (--split)")
    made = json.load(open(os.path.join(out, "config.json")))
    run = Run(Config(**{k: v for k, v in made.items() if k in Config.__dataclass_fields__}), ds, out)
    run.tokenize()
    qids = list(ds.qrels[args.split])
    scores, ids = retrieve(run, run.restore(DualEncoder, os.path.abspath(args.encode)), {args.split: qids})[args.split]
    search.write_trec(args.run, qids, ds.pids, scores.cpu(), ids.cpu(), os.path.basename(args.encode))
    print(f"wrote {args.run}")


def pipeline(args, cfg, stages):
    check_config(cfg)
    root = args.data or "data/tiny"
    if args.data is None and not os.path.exists(root):
        import synth
        synth.generate(root + ".tmp", "tiny", 0)
        os.replace(root + ".tmp", root)
        print(f"wrote the tiny synthetic benchmark to {root}")
    ds = data.load(root)
    if args.encode:
        return encode_only(args, ds)
    os.makedirs(args.out, exist_ok=True)
    run = Run(cfg, ds, args.out)
    made = run.path("config.json")
    want = json.dumps({"data": os.path.abspath(root), **dataclasses.asdict(cfg)}, indent=1)
    if os.path.exists(made) and open(made).read() != want:
        raise Stop(f"{made}: {args.out} was made with another config or data set; use a new --out")
    write_text(made, want)
    print(ds.summary())
    print("config: " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()), flush=True)
    times, t_all = {}, time.time()
    for stage in STAGES:
        if stage != "tokenizer" and stage not in stages:
            continue
        why = skip_reason(run, stage) if stage != "tokenizer" else None
        if why:
            log(stage, f"skipped: {why}")
            continue
        for name in NEEDS.get(stage, []):
            if not os.path.exists(run.path(name)):
                raise Stop(f"{run.path(name)}: not found; stage {stage} needs it: add stage {MAKER[name]} to --stages")
        t0 = time.time()
        RUNNERS[stage](run)
        times[stage] = time.time() - t0
        if stage == "tokenizer":
            need = max(cfg.pool, cfg.kd_k) + max(map(len, run.pos.values()))
            if len(ds.pids) < need:
                raise Stop(f"{root}/corpus.jsonl:0: {len(ds.pids)} passages; --pool and --kd-k need {need}")
    print("time per stage: " + ", ".join(f"{s} {t:.0f}s" for s, t in times.items()) +
          f"; total {time.time() - t_all:.0f}s")


def main(argv=None):
    args, cfg, stages = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        pipeline(args, cfg, stages)
    except (Stop, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
