"""Queries the query generator writes, and the two uses the pipeline makes of them (METHOD.md 4-5). Neither uses a
translation or any parallel text: the QG teacher alone writes them, from a passage and a target-language tag.

    distillation (stage teach, cfg.kd_written)   new queries for training passages, in the languages the QG was
        trained to write, a language drawn with weight 1 / (its training queries): the low-resource ones most often.
        They join the training queries in distillation, where their only term is L_kd over their C(q') (kd_written.pt).
    alignment (stage align)   for each training query, a query q' for its positive in another language; the student
        learns to treat q and q' alike (generated.pt).

Generation never emits a special token but [EOS] nor a language tag; it is greedy, or sampled from one seeded
stream, and optionally blocks repeated n-grams (cfg.gen_no_repeat).
"""
import random
from collections import Counter

import torch
import torch.nn.functional as F

import data
import dist
from encoded import SCORE_CHUNK, Candidates, batch_rows
from outdir import DEVICE, log
from teacher import QueryGenerator

GEN_CHUNK = 64       # passages per generation call


def write(d, qg, rows, langs, cfg, stage):
    """The QG's query for each passage row rows[i] in language langs[i], at most max_len_q - 2 tokens (room for the
    marker or tag, and [EOS]) -> lists of token ids. Greedy, or sampled (gen_temperature > 0) from a seeded stream;
    under torchrun each rank writes its share of the rows from a stream of its own."""
    g = torch.Generator().manual_seed(cfg.seed + (dist.rank() << 32))  # sampling: a stream per torchrun rank
    tags = torch.tensor([d.tag[x] for x in langs], dtype=torch.long)
    banned = [t for t in range(data.EOS)] + sorted(t for t in d.tag.values() if t is not None)
    rows, max_len = torch.as_tensor(rows, dtype=torch.long), cfg.max_len_q - 2

    def chunk(s):
        ids, mask = qg.generate(*d.passages(rows[s]), tags[s].to(DEVICE), max_len, data.EOS, cfg.gen_temperature, 0,
                                g, banned=banned, no_repeat=cfg.gen_no_repeat)
        return F.pad(ids.masked_fill(~mask, data.PAD), (0, max_len - ids.size(1)))
    ids = d.chunked(cfg.log_every, stage, len(rows), GEN_CHUNK, chunk)                     # [n, max_len]
    return [[tok for tok in row if tok != data.PAD] for row in ids.tolist()]


def show(d, langs, tokens, sources, keep, stage):
    """The share kept and two examples per language, for the reader of the log."""
    for x in sorted(set(langs) - {None}):
        mine = [i for i, y in enumerate(langs) if y == x]
        log(stage, f"{x}: {sum(keep[i] for i in mine)} of {len(mine)} written queries kept, e.g. " + "; ".join(
            f"{d.tok.decode(tokens[i])!r} <- {sources[i]}" for i in mine[:2]))


def for_distillation(cfg, d, out, scorers):
    """New distillation queries: one for each of a cfg.kd_written share of the training passages (the training
    queries' first positives, in a seeded order), in a language the QG was trained to write, drawn with weight
    1 / its number of training queries -> {qids, lang, tokens, rows}, which become queries of d (add); a written
    query that came out empty is dropped. Their C(q) scored like the training queries' by `scorers` (warm DE, QG,
    CE) join them in kd_written.pt."""
    qg = scorers[1]
    n_train = Counter(d.ds.lang[q] for q in d.train)
    langs, rng = sorted(n_train), random.Random(cfg.seed)
    passages = sorted({d.pos[q][0] for q in d.train})
    rng.shuffle(passages)
    rows = passages[:round(cfg.kd_written * len(passages))]
    target = rng.choices(langs, [1 / n_train[x] for x in langs], k=len(rows))
    tokens = write(d, qg, rows, target, cfg, "teach") if rows else []
    show(d, target, tokens, [f"passage {d.ds.pids[r]!r}" for r in rows], [bool(t) for t in tokens], "teach")
    kept = [i for i, t in enumerate(tokens) if t]
    w = {"qids": [f"written/{i}" for i in kept], "lang": [target[i] for i in kept],
         "tokens": [tokens[i] for i in kept], "rows": [rows[i] for i in kept]}
    add(d, w)
    c = d.score_candidates(*scorers, w["qids"], cfg.kd_k, cfg.seed, cfg.log_every, union=cfg.kd_union)
    out.save("kd_written.pt", {**w, **{f: getattr(c, f) for f in ("cand", "de", "qg", "ce")}})
    log("teach", "written queries, own passage first in C(q): " + ", ".join(f"{n} {r['all']:.3f}" for n, r in d.top_rate(c).items()))


def add(d, w):
    """Make the written distillation queries w (for_distillation's dict, or kd_written.pt) queries of d, once: d is
    shared by the stages, so from then on its query forms, positives and languages include them."""
    if w["qids"] and w["qids"][0] not in d.qrow:
        d.add_queries(w["qids"], w["lang"], w["tokens"], w["rows"])


def distillation_set(d, out):
    """The training queries' C(q) (kd_cache.pt) followed by the written distillation queries' (kd_written.pt, which
    become queries of d) as one Candidates."""
    c, w = Candidates(**out.load("kd_cache.pt")), out.load("kd_written.pt")
    add(d, w)
    return Candidates(c.qids + w["qids"], *(torch.cat([getattr(c, f), w[f]]) for f in ("cand", "de", "qg", "ce")),
                      written=len(w["qids"]))


def taught_rows(cfg, d, out, c, teacher):
    """kd_gate: [Q] bool, True for the rows of c in the languages the teacher is trusted in on dev (teachers.json,
    EncodedData.trusted_languages: no dev queries, no trust); else None (all)."""
    if not cfg.kd_gate or not out.exists("teachers.json"):
        log("kd", f"{teacher}: distilled in every language" + (" (no dev queries to choose on)" if cfg.kd_gate else ""))
        return None
    trusted = d.trusted_languages(out.read_json("teachers.json", "the teach stage's teachers.json")["dev"], teacher)
    log("kd", f"{teacher}: distilled in the languages {trusted}, chosen on dev (kd_gate)")
    return torch.tensor([d.lang(q) in trusted for q in c.qids], dtype=torch.bool)


def for_alignment(cfg, d, out, c):
    """For each training query of c (Candidates) the QG writes, once, a query q' for its positive in another language
    -> generated.pt {qids, lang, tokens, keep}. align_to any: any other query language; down: only a language the
    QG was trained to write with fewer training queries than the source's (the high-resource side teaches the
    low-resource one; a query without such a language gets no q'). round_trip keeps q' only where the QG ranks p+
    first among C(q). -> the dict saved."""
    ds, rng, n_train = d.ds, random.Random(cfg.seed), Counter(d.ds.lang[q] for q in d.train)
    langs = [x for x in ds.languages() if cfg.align_to == "any" or n_train[x]]
    options = [[x for x in langs if x != ds.lang[q] and (cfg.align_to == "any" or n_train[x] < n_train[ds.lang[q]])]
               for q in c.qids]
    target = [rng.choice(xs) if xs else None for xs in options]
    rows, qg = [i for i, x in enumerate(target) if x], out.load_model(QueryGenerator, "qg.pt")
    queries = iter(write(d, qg, c.cand[rows, 0], [target[i] for i in rows], cfg, "align") if rows else [])
    tokens, keep = [next(queries) if x else [] for x in target], [x is not None for x in target]
    if cfg.round_trip:  # the QG must rank q''s passage first among C(q) when it reads q'
        r = qg_reading(cfg, d, qg, target, tokens, c.cand)
        keep = [k and bool(x[0] > x[1:].max()) for k, x in zip(keep, r)]
    out.save("generated.pt", made := {"qids": c.qids, "lang": target, "tokens": tokens, "keep": keep})
    show(d, target, tokens, [f"{ds.queries[q]!r} ({ds.lang[q]})" for q in c.qids], keep, "align")
    return made


def qg_reading(cfg, d, qg, langs, tokens, cand):
    """The QG's r(q', p) over candidates cand [Q, k] (corpus rows) reading the written queries q' (lists of token ids,
    in languages langs; an empty one reads as its tag and [EOS]) -> [Q, k] on the CPU."""
    tgt = d.targets(langs, tokens)
    return d.chunked(cfg.log_every, "align", len(tokens), SCORE_CHUNK,
                     lambda s: d.qg_scores(qg, batch_rows(*tgt, s), cand[s]).float())
