"""The whole method as one pipeline, stage by stage, on a CPU by default (METHOD.md: the equations and choices).

    python train.py --preset micro                    # a one-minute run on the micro synthetic benchmark
    python train.py                                   # the tiny synthetic benchmark (written if absent), ~15 CPU min
    python train.py --data DIR --preset gpu           # a BEIR-layout data set on a GPU
    python train.py --stages de,eval --de-steps 300   # chosen stages; every Config field is a flag (--help)
    python train.py --encode out/tiny/qg_kd.pt --split test --run run.trec   # search with a saved dual-encoder

The stages, their inputs and outputs are the table STAGES at the end. Each stage makes only its missing outputs, so
the same command again continues where a run stopped. Below this file: outdir.py (output folder, checkpoints,
device), encoded.py (the tokenised data set, embeddings, rankings, negatives), cli.py, report.py, dist.py.
"""
import dataclasses
import json
import math
import os
import sys
from collections import namedtuple
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import data
import cli
import dist
import losses
import written
from encoded import POOL_SLACK, Candidates, EncodedData, batch_rows, pad_on_device
from model import DualEncoder, Encoder, pad_batch
from outdir import DEVICE, Progress, Stop, autocast, chosen, log
from report import encode_only, stage_eval
from teacher import CrossEncoder, QueryGenerator


@dataclass
class Config:
    # networks: the DE, the CE and the QG's encoder share one shape
    vocab_size: int = 0          # WordPiece vocabulary (0: sized to the data, data.AUTO_VOCAB), in [0, inf)
    dim: int = 128               # channels, in [1, inf)
    n_layers: int = 2            # encoder blocks (DE, CE, QG encoder), in [1, inf)
    n_dec_layers: int = 2        # QG decoder blocks, in [1, inf)
    n_heads: int = 4             # attention heads (dim must be a multiple), in [1, inf)
    dropout: float = 0.1         # dropout on embeddings, attention and residual branches, in [0, 1)
    init_std: float = 0.02       # std of the token-embedding init (1.0 broke MLM pre-training here), in (0, inf)
    pooling: str = "cls"         # DE pooling, one of {cls, mean}
    normalize: bool = False      # L2-normalise DE embeddings (then set tau and tau_s ~ 0.05)
    max_len_q: int = 32          # query tokens, marker (or language tag and [EOS]) included, in [3, inf)
    max_len_p: int = 96          # passage tokens (title + text), marker included, in [2, inf)
    # optimisation: AdamW, linear warm-up then cosine decay (lr_at), in every stage
    lr: float = 5e-4             # peak learning rate, in (0, inf)
    weight_decay: float = 0.01   # AdamW weight decay, in [0, inf)
    warmup: float = 0.1          # fraction of a stage's steps spent warming up, in [0, 1]
    batch: int = 32              # queries (or sentences) per step, in [1, inf)
    rank_batch: int = 8          # queries per ranking or distillation step, each with its candidates, in [1, inf)
    gather_negatives: bool = True  # under torchrun, every rank's passages are in-batch negatives (else its own)
    # stage lengths, in optimiser steps
    mlm_steps: int = 600         # MLM pre-training of the encoder, in [0, inf)
    denoise_steps: int = 500     # span-corruption pre-training of the QG, in [0, inf)
    de_steps: int = 500          # per DE round (and the pivot DE of drdecr), in [0, inf)
    qg_steps: int = 800          # QG generation training, in [0, inf)
    rank_steps: int = 900        # QG ranking fine-tune, in [0, inf)
    ce_steps: int = 600          # cross-encoder training, in [0, inf)
    kd_steps: int = 300          # each distilled student (ce_kd, qg_kd, qg_kd_align, drdecr), in [0, inf)
    # method
    tau: float = 1.0             # contrastive temperature, in (0, inf)
    negatives: int = 1           # hard negatives per query in DE training (at most pool), in [0, inf)
    pool: int = 30               # mined candidates per query that negatives are drawn from, in [1, inf)
    rank_negs: int = 7           # negatives per query for the QG ranking step and the CE (at most teacher_pool), in [1, inf)
    teacher_pool: int = 12       # the teachers' negatives: from the top this many (= kd_k: lists like C(q)), in [1, inf)
    teacher_negatives: str = "de"  # the teachers' negatives: the warm DE's, BM25's (claim 1), both, one of {de, bm25, union}
    teacher_frac: float = 1.0    # share of each language's training queries the teachers see (claim 1), in (0, 1]
    teacher_select: int = 0      # every this many steps a teacher in training is judged on dev; its best kept (0: its last), in [0, inf)
    lambda_gen: float = 1.0      # weight of L_gen in the QG ranking loss, in [0, inf)
    tau_r: float = 1.0           # temperature of the QG ranking softmax, in (0, inf)
    kd_k: int = 12               # C(q) = p+ and the warm DE's top-K other passages, in [1, inf)
    kd_union: bool = False       # C(q) from the warm DE's and BM25's rankings in turn (else the DE's alone)
    alpha: float = 1.0           # weight of L_kd, in [0, inf)
    kd_gate: bool = False        # distil a language only where the teacher ranks dev C(q) above the warm DE and blind
    kd_written: float = 0.0      # share of the training passages the QG writes a distillation query for, in [0, 1]
    kd_standardize: bool = False  # each query's teacher scores to mean 0, sd 1 over its C(q) before tau_t
    tau_t: float = 0.0           # teacher temperature; 0 = as sharp as the warm DE (matched_temperature), in [0, inf)
    tau_s: float = 1.0           # student temperature, in (0, inf)
    align: str = "dist"          # alignment loss, one of {dist, kd, emb}
    beta: float = 1.0            # weight of the alignment loss, in [0, inf)
    gen_temperature: float = 0.0  # QG sampling temperature for generated queries (0 = greedy), in [0, inf)
    gen_no_repeat: int = 2       # a written query repeats no n-gram of this length (0 = off), in [0, inf)
    align_to: str = "down"       # language of a written query: any other, or a lower-resource trained one, one of {any, down}
    align_detach: bool = True    # the alignment term sends no gradient into the passage embeddings
    round_trip: bool = False     # keep a written query only where the QG ranks its passage first among C(q)
    gamma: float = 1.0           # weight of DR.DECR's token-level representation KD, in [0, inf)
    mlm_prob: float = 0.15       # share of tokens masked in MLM pre-training, in (0, 1]
    noise: float = 0.3           # share of tokens dropped in spans by the QG's denoising pre-training, in (0, 1)
    eval_k: int = 100            # passages retrieved per query, in [1, inf)
    pivot: str = "en"            # language of the passages (their tag in the QG)
    seed: int = 0                # seeds every initialisation, batch order and draw, in [0, inf)
    log_every: float = 5.0       # seconds between progress lines, in [0, inf)
    ckpt_every: int = 100        # steps between resumable checkpoints inside a stage, in [1, inf)


PRESETS = {  # each preset's default data set is a synthetic benchmark (data/<SYNTH_SIZE>); real: meant for --data
    "micro": dict(dim=32, n_heads=2, n_layers=1, n_dec_layers=1, vocab_size=700, max_len_p=48, batch=16, rank_batch=4,
                  mlm_steps=30, denoise_steps=20, de_steps=100, qg_steps=30, rank_steps=10, ce_steps=10, kd_steps=10,
                  kd_k=4, rank_negs=3, pool=8, teacher_pool=4, eval_k=20, ckpt_every=5, teacher_select=4),
    "tiny": {}, "real": dict(pooling="mean", normalize=True, tau=0.05, tau_s=0.05, mlm_steps=2000),  # measured on DDTP
    "gpu": dict(vocab_size=32000, dim=256, n_layers=4, n_dec_layers=4, batch=128, rank_batch=32, mlm_steps=20000,
                denoise_steps=10000, de_steps=5000, qg_steps=10000, rank_steps=10000, ce_steps=6000, kd_steps=5000,
                max_len_p=192, kd_k=32, teacher_pool=32, ckpt_every=1000),
}
SYNTH_SIZE = {"micro": "micro", "tiny": "tiny", "real": "tiny", "gpu": "small"}


# ----------------------------------------------------------------------------- the one training loop

def lr_at(cfg, i, steps):
    """Learning rate of step i of `steps`: linear warm-up over cfg.warmup of them, then cosine decay to 0."""
    warm = max(1, int(cfg.warmup * steps))
    return cfg.lr * ((i + 1) / warm if i < warm else 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm))))


def fit(cfg, out, name, model, steps, step, save_as, key=None, judge=None):
    """Train `model` for `steps` calls of `step(gen) -> (loss, logs)`, then save it as `save_as`.

    AdamW with lr_at, gradients clipped at 1.0, a progress line every cfg.log_every seconds, and every
    cfg.ckpt_every steps `<name>.partial.pt`, from which a restarted run resumes to the same weights as an
    uninterrupted one (on a CPU; CUDA kernels are not bitwise deterministic). `key` seeds the batches and dropout
    (default: the name): stages with one key draw the same batches, so two students differ by their losses only.
    A loss that is not finite stops the run and drops the partial state (its weights may be NaN already). Under
    torchrun every rank draws the same batches and computes its share of each (dist.py); DDP averages the gradients.
    judge(model) -> float: called in eval mode every cfg.teacher_select steps and after the last; the weights it
    judged best (outdir.chosen) are saved, not the last (the partial state keeps the judgements and best weights)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    seed = cfg.seed * 1000 + sum(map(ord, key or name))
    gen = torch.Generator().manual_seed(seed)  # batches, the same on every rank
    torch.manual_seed(dist.dropout_seed(seed))  # dropout, a stream per rank
    start, saved = out.resume(name, model, opt, gen)
    judged, best = saved.get("judged", []), saved.get("best")  # judge's [(step, score)], the chosen weights so far
    if start:
        log(name, f"resuming at step {start}/{steps}")
    run = dist.ddp(model)                      # run(step, gen): step(gen), under torchrun inside DDP
    model.train()
    progress = Progress(name, cfg.log_every, start)
    for i in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, i, steps)
        with autocast():
            loss, logs = run(step, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if not math.isfinite(value := loss.item()):
            out.drop(f"{name}.partial.pt")
            raise Stop(f"stage {name}: the loss is {value} at step {i + 1}; nothing was saved for this stage "
                       "(a lower --lr, in a new --out?)")
        progress.tick(i + 1, steps, f" loss {value:.4f}" + "".join(f" {k} {v:.3f}" for k, v in logs.items()))
        if judge and ((i + 1) % cfg.teacher_select == 0 or i + 1 == steps):  # on dev (cfg.teacher_select)
            judged.append((i + 1, judge(model.eval())))
            log(name, f"step {i + 1}: p+ first among dev C(q) {judged[-1][1]:.3f}")
            if chosen(judged) == judged[-1]:  # the best so far: its weights kept, on the CPU
                best = {k: v.cpu().clone() for k, v in model.state_dict().items()}
            model.train()
        if (i + 1) % cfg.ckpt_every == 0 and i + 1 < steps:
            out.save_progress(name, model, opt, gen, i + 1, **({"judged": judged, "best": best} if judge else {}))
    if judge and judged:  # the chosen weights, and the judgements in <save_as>.select.json
        out.load_chosen(name, model, save_as, judged, best, cfg.teacher_select)
    out.finish(name, model.eval(), save_as)


# ----------------------------------------------------------------------------- tokenizer and pre-training

def stage_tokenizer(cfg, ds, out):
    """WordPiece on the data set's own text, a <2l> tag per language (tokenizer.json) -> the EncodedData of later stages."""
    return EncodedData.tokenized(ds, out, cfg.vocab_size, cfg.max_len_q, cfg.max_len_p, cfg.pivot)


def stage_pretrain(cfg, d, out):
    """MLM encoder (the start of every later model), then the QG's denoising pre-training (span corruption)."""
    texts = d.pretrain_texts(cfg.max_len_q - 2, cfg.pivot)
    if out.todo("pretrain", "pretrain.pt"):
        enc = out.new_model(Encoder, d.model_config(cfg), cfg.seed)

        def step(gen):  # predict the picked tokens of [CLS] text from the corrupted input
            ids, mask = pad_batch([[data.CLS] + toks for _, toks in d.draw(gen, texts, cfg.batch)])
            x, picked = data.mlm_mask(ids, mask, cfg.mlm_prob, enc.cfg.vocab_size, gen)
            n_all = int(picked.sum())
            ids, x, mask, picked = (dist.mine(v).to(DEVICE) for v in (ids, x, mask, picked))  # this rank's share
            h = enc(x, mask)[picked]                                                   # [n, C]
            logits = enc.mlm_logits(h).float()                                         # [n, V]
            loss = F.cross_entropy(logits, ids[picked]) if len(h) else logits.sum()   # mean over its n tokens, or 0
            return loss * dist.mean_weight(len(h), n_all), {}
        fit(cfg, out, "pretrain", enc, cfg.mlm_steps, step, "pretrain.pt")
    if out.todo("pretrain", "qg_pretrain.pt"):
        qg = out.new_model(QueryGenerator, d.model_config(cfg), cfg.seed, "pretrain.pt")

        def step(gen):  # input [P] + corrupted text, target <2l> [MASK] span [MASK] span ... [EOS]
            batch = d.draw(gen, texts, cfg.batch)
            src, tgt = zip(*(data.span_corrupt(toks, cfg.noise, gen) for _, toks in batch))
            tgt = [[d.tag[lang]] + spans + [data.EOS] for (lang, _), spans in zip(batch, tgt)]
            src, tgt = dist.mine(src), dist.mine(tgt)                                          # this rank's share
            return qg.loss(*pad_on_device([[data.P] + s for s in src]), *pad_on_device(tgt)), {}
        fit(cfg, out, "denoise", qg, cfg.denoise_steps, step, "qg_pretrain.pt")


# ----------------------------------------------------------------------------- the dual-encoder (METHOD.md 1)

def train_de(cfg, d, out, name, init, q_ids, q_mask, qids, pool):
    """Contrastive DE training: each step B queries, each with its positive and cfg.negatives hard negatives drawn
    from its `pool` row; every passage of the batch is a candidate of every query, except the other positives of a
    query (duplicates, false negatives), which are masked. q_ids/q_mask: the query side, a row per entry of qids.
    Under torchrun each rank encodes its share; the loss is over every rank's (cfg.gather_negatives) or its own."""
    de = out.new_model(DualEncoder, d.model_config(cfg), cfg.seed, init)
    B, h, n = cfg.batch, cfg.negatives, cfg.batch // dist.world()

    def step(gen):
        b = torch.randint(len(qids), (B,), generator=gen)
        pos = torch.tensor([d.positive(gen, qids[i]) for i in b.tolist()])
        neg = pool[b[:, None], torch.randint(pool.size(1), (B, h), generator=gen)]            # [B, h]
        cand = torch.cat([torch.cat([pos[r], neg[r].flatten()]) for r in dist.shares(B)])    # [M = B(1+h)]
        q = de.encode(*batch_rows(q_ids, q_mask, dist.mine(b)))                              # [n, C] this rank's
        p = de.encode(*d.passages(dist.mine(cand)))                                          # [n(1+h), C]
        if cfg.gather_negatives:  # every rank's queries and passages: the one-process batch, in the order of cand
            q, p = dist.gather(q), dist.gather(p)                                            # [B, C], [M, C]
        else:
            b, cand = dist.mine(b), dist.mine(cand)
        s = de.score(q, p)                                                                   # [len(b), len(cand)]
        ar = torch.arange(len(b), device=DEVICE)
        target = ar + h * (ar // n * n)          # each rank's block of cand: its n positives, then its negatives
        valid = ~d.other_positives([qids[i] for i in b.tolist()], cand)
        valid[ar, target] = True
        loss, acc = losses.contrastive_loss(s, target, valid, cfg.tau)
        return loss, {"acc": acc.item()}
    fit(cfg, out, name, de, cfg.de_steps, step, f"{name}.pt")


def stage_de(cfg, d, out):
    """Round 1 with BM25's negatives, round 2 (from round 1) with the round-1 DE's own: the warm DE."""
    if out.todo("de", "de_bm25.pt"):
        pool = d.negative_pool(d.train, cfg.pool, cfg.seed)
        train_de(cfg, d, out, "de_bm25", "pretrain.pt", *d.de_queries(d.train), d.train, pool)
    if out.todo("de", "de.pt"):
        pool = d.negative_pool(d.train, cfg.pool, cfg.seed, out.load_model(DualEncoder, "de_bm25.pt"))
        train_de(cfg, d, out, "de", "de_bm25.pt", *d.de_queries(d.train), d.train, pool)


# ----------------------------------------------------------------------------- the teachers (METHOD.md 2, 3)

def teacher_negatives(cfg, d, out, qids):
    """The teachers' negatives: [Q, teacher_pool] from the warm DE's ranking, BM25's, or both in turn."""
    warm = out.load_model(DualEncoder, "de.pt") if cfg.teacher_negatives != "bm25" else None  # None: BM25's alone
    return d.negative_pool(qids, cfg.teacher_pool, cfg.seed, warm, cfg.teacher_negatives == "union")


def dev_judge(cfg, d, out, name):
    """fit's judge of the teacher stage `name` trains (cfg.teacher_select, EncodedData.dev_judge), or None: keep the last."""
    if cfg.teacher_select:
        return d.dev_judge(out.load_model(DualEncoder, "de.pt"), cfg.kd_k, cfg.seed, cfg.log_every, cfg.kd_union, name)


def stage_qg(cfg, d, out):
    """Generation training on (q, p+) pairs in every language, then the ranking fine-tune L_qgrank."""
    qids = d.share_of_train(cfg.teacher_frac, cfg.seed)
    if out.todo("qg", "qg_gen.pt"):
        qg = out.new_model(QueryGenerator, d.model_config(cfg), cfg.seed, "qg_pretrain.pt")

        def step(gen):
            batch = d.draw(gen, qids, cfg.batch)
            pos = [d.positive(gen, q) for q in batch]
            return qg.loss(*d.passages(dist.mine(pos)), *d.qg_targets(dist.mine(batch))), {}
        fit(cfg, out, "qg_gen", qg, cfg.qg_steps, step, "qg_gen.pt")
    if out.todo("qg", "qg.pt"):
        qg = out.new_model(QueryGenerator, d.model_config(cfg), cfg.seed, "qg_gen.pt")
        pool = teacher_negatives(cfg, d, out, qids)

        def step(gen):
            b, cand = (dist.mine(x) for x in d.ranking_batch(gen, qids, pool, cfg.rank_batch, cfg.rank_negs))
            r = d.qg_scores(qg, d.qg_targets([qids[i] for i in b.tolist()]), cand)             # [B, 1+n]
            loss = losses.qg_rank_loss(r, -r[:, 0].mean(), tau_r=cfg.tau_r, lambda_gen=cfg.lambda_gen)
            return loss, {"acc": (r.argmax(1) == 0).float().mean().item()}
        fit(cfg, out, "qg_rank", qg, cfg.rank_steps, step, "qg.pt", judge=dev_judge(cfg, d, out, "qg_rank"))


def stage_ce(cfg, d, out):
    """The cross-encoder teacher: L_cerank over the positive and the same kind of negatives as the QG's."""
    qids = d.share_of_train(cfg.teacher_frac, cfg.seed)
    if out.todo("ce", "ce.pt"):
        ce = out.new_model(CrossEncoder, d.model_config(cfg), cfg.seed, "pretrain.pt")
        pool = teacher_negatives(cfg, d, out, qids)

        def step(gen):
            b, cand = (dist.mine(x) for x in d.ranking_batch(gen, qids, pool, cfg.rank_batch, cfg.rank_negs))
            c = ce(*d.ce_pairs([qids[i] for i in b.tolist()], cand)).view(cand.shape)           # [B, 1+n]
            return losses.rank_loss(c), {"acc": (c.argmax(1) == 0).float().mean().item()}
        fit(cfg, out, "ce", ce, cfg.ce_steps, step, "ce.pt", judge=dev_judge(cfg, d, out, "ce"))


# ----------------------------------------------------------------------------- distillation (METHOD.md 4-6)

def distil(cfg, d, out, name, c, t_scores, alpha=None, aligned=None, pivot=None, taught=None):
    """A copy of the warm DE trained on the training queries' C(q) (Candidates c) with
        L = L_ce + alpha L_kd  [+ beta L_align]  [+ gamma L_tok]
    L_ce: the contrastive loss over every candidate of the batch; L_kd: KL from the teacher's t_scores [Q, 1+K] to
    the student over each query's own C(q); alpha defaults to cfg.alpha. The last c.written rows of c are written
    distillation queries: a step draws as many as training queries; their one term is L_kd. taught [Q] bool: the
    rows L_kd is over (default all; kd_gate). aligned = (ids, mask, scores, tau, keep) adds the alignment term on
    the QG-written q' (a row per training query, DE form; scores, tau: the teacher on C(q) reading q', align kd only;
    keep: the rows that have a q'; a written row has none).
    pivot = (pivot DE, ids, mask) adds DR.DECR's token-level KD from the pivot DE reading the translations.
    Under torchrun each rank encodes its share of the queries with their C(q); every term but L_tok is over every
    rank's (or its own: gather_negatives), L_tok over its own tokens, weighted (dist.mean_weight)."""
    q_ids, q_mask = d.de_queries(c.qids)
    alpha, R, n_real = cfg.alpha if alpha is None else alpha, cfg.rank_batch, len(c.qids) - c.written
    taught = torch.ones(len(c.qids), dtype=torch.bool) if taught is None else taught
    t_scores = losses.standardize(t_scores) if cfg.kd_standardize else t_scores  # one scale for every query
    tau_t = cfg.tau_t or losses.matched_temperature(t_scores[:n_real], c.de[:n_real], tau_s=cfg.tau_s)  # METHOD.md 4
    log(name, f"teacher temperature {tau_t:.3g}")
    de, M = out.new_model(DualEncoder, d.model_config(cfg), cfg.seed, "de.pt"), c.cand.size(1)
    together = dist.gather if cfg.gather_negatives else lambda x: x  # under torchrun: every rank's rows, or its own

    def step(gen):
        b = torch.randint(n_real, (R,), generator=gen)
        if c.written:  # as many written queries; under torchrun each rank's share is its training rows, then its written
            w = n_real + torch.randint(c.written, (R,), generator=gen)
            b = torch.cat([torch.cat([b[r], w[r]]) for r in dist.shares(R)])
        mine = dist.mine(b)                                               # this rank's queries (all without torchrun)
        n_tok = int(q_mask[b].sum())                                      # the batch's query tokens (L_tok's mean)
        qi, qm = batch_rows(q_ids, q_mask, mine)
        hq = de.token_states(qi, qm)                                                          # [B/N, Tq, C]
        q = together(de.pool(hq, qm))                                                         # [B, C]
        p = together(de.encode(*d.passages(c.cand[mine].flatten())))                          # [B*M, C]
        b = b if cfg.gather_negatives else mine                                   # the B queries of the loss
        B, cand, ar = len(b), c.cand[b].flatten(), torch.arange(len(b), device=DEVICE)       # cand [B*M]
        s = de.score(q, p)                                                                    # [B, B*M]
        valid = ~d.other_positives([c.qids[i] for i in b.tolist()], cand)
        valid[ar, ar * M] = True
        real = (b < n_real).to(DEVICE)                                         # [B] training rows, not written ones
        valid &= real.repeat_interleave(M)[None, :]                            # L_ce: the training rows' candidates
        l_ce, acc = losses.contrastive_loss(s[real], (ar * M)[real], valid[real], cfg.tau)
        own, t, taught_b = s.view(B, B, M)[ar, ar], t_scores[b].to(DEVICE), taught[b].to(DEVICE)  # own [B, M]

        def kd_mean(rows):  # L_kd averaged over `rows` of the batch, 0 on its rows not taught
            if not (k := rows & taught_b).any():
                return own.sum() * 0
            return losses.kd_loss(own[k], t[k], tau_s=cfg.tau_s, tau_t=tau_t) * (k.sum() / rows.sum())
        l_kd = kd_mean(real) + (kd_mean(~real) if c.written else 0)          # the written rows: a term of their own
        loss, logs = l_ce + alpha * l_kd, {"ce": l_ce.item(), "kd": l_kd.item(), "acc": acc.item()}
        if aligned:  # METHOD.md 5: the student treats q and the QG-written q' (same passage, other language) alike
            g_ids, g_mask, g_scores, g_tau, g_keep = aligned
            bq, mq = b.clamp(max=n_real - 1), mine.clamp(max=n_real - 1)          # written rows: any row, then dropped
            k = (g_keep[bq] & (b < n_real)).to(DEVICE)                                        # [B] rows with a q'
            eg = together(de.encode(*batch_rows(g_ids, g_mask, mq)))                          # [B, C] e(q')
            if not k.any():
                l_a = torch.zeros((), device=DEVICE)
            elif cfg.align == "emb":  # q'_i against every q_j of the batch; q_j about the same passage is masked
                pos = c.cand[b, 0]
                mask = (pos[:, None] != pos[None, :]).to(DEVICE) | torch.eye(B, dtype=torch.bool, device=DEVICE)
                l_a = losses.align_emb_loss(q[k], eg[k], cfg.tau, mask[k][:, k])
            else:
                pc = p.view(B, M, -1).detach() if cfg.align_detach else p.view(B, M, -1)     # [B, M, C]
                with torch.autocast(DEVICE.type, enabled=False):
                    s_g = torch.einsum("bc,bmc->bm", eg.float(), pc.float())                 # [B, M] s(q', C(q))
                l_a = (losses.align_dist_loss(own[k], s_g[k], tau=cfg.tau_s) if cfg.align == "dist" else
                       losses.kd_loss(s_g[k], g_scores[bq].to(DEVICE)[k], tau_s=cfg.tau_s, tau_t=g_tau))
            loss, logs["align"] = loss + cfg.beta * l_a, l_a.item()
        if pivot:  # METHOD.md 6: the student's query token states regress onto the pivot DE's on the translation
            pivot_de, t_ids, t_mask = pivot
            with torch.no_grad():
                ti, tm = batch_rows(t_ids, t_mask, mine)
                ht = pivot_de.token_states(ti, tm)                                            # [B, Tt, C]
            l_tok = losses.token_kd_loss(hq, qm, ht, tm)                           # mean over this rank's tokens
            loss, logs["tok"] = loss + cfg.gamma * l_tok * dist.mean_weight(int(qm.sum()), n_tok), l_tok.item()
        return loss, logs
    fit(cfg, out, name, de, cfg.kd_steps, step, f"{name}.pt", key="distil")


def stage_teach(cfg, d, out):
    """C(q) scored once by the warm DE and both teachers: the training queries' (kd_cache.pt), the QG's written
    distillation queries' (kd_written.pt, cfg.kd_written; empty at 0), and the dev queries' rates (teachers.json)."""
    cache, more = out.todo("teach", "kd_cache.pt"), out.todo("teach", "kd_written.pt")
    rated = bool(d.dev) and out.todo("teach", "teachers.json")
    if not (cache or more or rated):  # all made: no model to load
        return
    scorers = [out.load_model(cls, f"{n}.pt") for cls, n in ((DualEncoder, "de"), (QueryGenerator, "qg"), (CrossEncoder, "ce"))]
    if cache:
        c = d.score_candidates(*scorers, d.train, cfg.kd_k, cfg.seed, cfg.log_every, union=cfg.kd_union)
        out.save("kd_cache.pt", dataclasses.asdict(c))
    if more:  # the QG's written distillation queries (written.py), scored like the training queries
        written.for_distillation(cfg, d, out, scorers)                      # now queries of d too; kd_written.pt
    if rated:
        rates = d.teacher_rates(*scorers, d.dev, cfg.kd_k, cfg.seed, cfg.log_every, cfg.kd_union)
        out.write_text("teachers.json", json.dumps({"dev": rates}, indent=1) + "\n")
        log("teach", f"dev: p+ first among C(q) (chance {1 / (1 + cfg.kd_k):.3f}), reading the query / another: " +
            ", ".join(f"{n} {rates['top1'][n]['all']:.3f} / {rates['blind_top1'][n]['all']:.3f}" for n in ("de", "qg", "ce")))


def stage_kd(cfg, d, out):
    """Each teacher distilled into a copy of the warm DE, and the control de_ft: the same stage with alpha = 0 (same
    batches, schedule, candidates and steps), so that a student is compared with more training, not with less."""
    c = written.distillation_set(d, out)
    for name, teacher, alpha in (("de_ft", "qg", 0.0), ("ce_kd", "ce", cfg.alpha), ("qg_kd", "qg", cfg.alpha)):
        if out.todo("kd", f"{name}.pt"):
            taught = written.taught_rows(cfg, d, out, c, teacher) if alpha else None
            distil(cfg, d, out, name, c, getattr(c, teacher), alpha=alpha, taught=taught)


def stage_align(cfg, d, out):
    """qg_kd plus alignment on QG-written queries in other languages; cfg.align picks the loss."""
    if not out.todo("align", "qg_kd_align.pt"):
        return
    c = Candidates(**out.load("kd_cache.pt"))                                          # the training queries'
    made = out.load("generated.pt") if out.exists("generated.pt") else written.for_alignment(cfg, d, out, c)
    g_ids, g_mask = pad_batch([[data.Q] + toks for toks in made["tokens"]])                         # [Q, Tq]
    g_scores = g_tau = None
    if cfg.align == "kd":  # the teacher's scores of the written queries over C(q), once
        g_scores = written.qg_reading(cfg, d, out.load_model(QueryGenerator, "qg.pt"), made["lang"], made["tokens"], c.cand)
        g_tau = cfg.tau_t or losses.matched_temperature(c.qg, c.de, tau_s=cfg.tau_s)
    aligned = (g_ids, g_mask, g_scores, g_tau, torch.tensor(made.get("keep", [True] * len(c.qids))))
    c = written.distillation_set(d, out)                                         # + the written distillation queries
    distil(cfg, d, out, "qg_kd_align", c, c.qg, aligned=aligned, taught=written.taught_rows(cfg, d, out, c, "qg"))


def stage_drdecr(cfg, d, out):
    """DR.DECR: a pivot-language DE trained on the oracle translations of the training queries teaches a copy of
    the warm DE by relevance KD over C(q) and token-level representation KD."""
    c = Candidates(**out.load("kd_cache.pt"))
    keep = [i for i, q in enumerate(c.qids) if q in d.ds.translations]
    if len(keep) < len(c.qids):  # only the training queries with a translation
        log("drdecr", f"{len(keep)} of {len(c.qids)} training queries have a translation: DR.DECR trains on those")
        c = Candidates([c.qids[i] for i in keep], *(getattr(c, f)[keep] for f in ("cand", "de", "qg", "ce")))
    trans = data.encode(d.tok, [d.ds.translations[q] for q in c.qids], cfg.max_len_q - 1)
    t_ids, t_mask = pad_batch([[data.Q] + toks for toks in trans])                                 # [Q, Tq]
    if out.todo("drdecr", "de_pivot.pt"):
        pool = d.hard_negatives(c.qids, d.bm25_ranking(trans, cfg.pool + POOL_SLACK), cfg.pool, cfg.seed)
        train_de(cfg, d, out, "de_pivot", "pretrain.pt", t_ids, t_mask, c.qids, pool)
    if not out.todo("drdecr", "drdecr.pt"):
        return
    pivot_de = out.load_model(DualEncoder, "de_pivot.pt")
    tq, tp = d.embed(pivot_de, t_ids, t_mask), d.embed_passages(pivot_de)                   # [Q, C], [N, C]
    t_scores = torch.einsum("qc,qmc->qm", tq, tp[c.cand.to(DEVICE)]).cpu()                   # [Q, 1+K]
    distil(cfg, d, out, "drdecr", c, t_scores, pivot=(pivot_de, t_ids, t_mask))


# ----------------------------------------------------------------------------- the stages, main

Stage = namedtuple("Stage", "name run needs makes")
STAGES = [  # in pipeline order, after the tokenizer; run by cli.run_stages, which skips and stops as its doc says
    Stage("pretrain", stage_pretrain, [], ["pretrain.pt", "qg_pretrain.pt"]),
    Stage("de", stage_de, ["pretrain.pt"], ["de_bm25.pt", "de.pt"]),
    Stage("qg", stage_qg, ["qg_pretrain.pt", "de.pt"], ["qg_gen.pt", "qg.pt"]),
    Stage("ce", stage_ce, ["pretrain.pt", "de.pt"], ["ce.pt"]),
    Stage("teach", stage_teach, ["de.pt", "qg.pt", "ce.pt"], ["kd_cache.pt", "kd_written.pt", "teachers.json"]),
    Stage("kd", stage_kd, ["kd_cache.pt", "kd_written.pt", "de.pt"], ["de_ft.pt", "ce_kd.pt", "qg_kd.pt"]),
    Stage("align", stage_align, ["kd_cache.pt", "kd_written.pt", "qg.pt"], ["generated.pt", "qg_kd_align.pt"]),
    Stage("drdecr", stage_drdecr, ["kd_cache.pt", "pretrain.pt"], ["de_pivot.pt", "drdecr.pt"]),
    Stage("eval", stage_eval, [], ["runs/", "results.json", "results.md"]),  # remade every time: cheap, reads all
]
NAMES = ["tokenizer"] + [s.name for s in STAGES]


def main(argv=None):
    """Every problem a user can cause (flag, data set, run folder, a file in it, a diverging loss) ends as one line
    `error: ...` and exit status 1 before anything is written for it; Ctrl-C ends with status 130, and running the
    same command again resumes."""
    makers = {"tokenizer.json": "tokenizer", **{name: s.name for s in STAGES for name in s.makes}}
    try:
        dist.init()  # under torchrun: this rank's process group and device; else nothing (dist.py)
        args, cfg, stages = cli.parse_args(argv, __doc__, Config, PRESETS, NAMES, SYNTH_SIZE)
        cli.check_config(cfg, dist.world())
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.synth and not os.path.exists(args.data) and dist.is_main():  # the other ranks wait for it
            cli.write_synth(args.data, SYNTH_SIZE[args.preset])
        dist.barrier()
        ds = data.load(args.data)
        if args.encode:
            return encode_only(args.encode, ds, args.split, args.run, cfg.eval_k, makers) or 0
        cli.check_corpus(cfg, ds, args.data)
        out = cli.run_folder(args, cfg, makers)
        print(ds.summary() + "\nconfig: " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()), flush=True)
        d = stage_tokenizer(cfg, ds, out)  # always: every other stage reads the data set as it tokenises it
        try:
            cli.check_inputs(STAGES, stages, d.lacks, out)
        except Stop:
            out.remove_if_new()  # the folder this run made holds nothing trained yet: leave none behind
            raise
        cli.run_stages(STAGES, stages, cfg, d, out)
    except (Stop, cli.FlagError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
