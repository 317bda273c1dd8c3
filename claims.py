"""The paper's two claims, measured with controls, paired intervals and several seeds: one command.

    python claims.py --seeds 0,1,2                  # the tiny benchmark: out/claims/claims.md (~2 h on 2 CPU cores)
    python claims.py --preset micro --seeds 0,1 --fracs 0.5,1 --out out/claims-micro      # a two-minute smoke test

For each seed (the same data; every model, batch and draw re-seeded; nothing shared between seeds):
  1. the whole pipeline (train.py) in <out>/seed<s>;
  2. claim 1 (Ren et al., Fig. 1: a QG teacher needs fewer training queries and weaker negatives than a
     cross-encoder): both teachers trained again from that seed's warm DE on the first --fracs of each language's
     training queries, with each kind of negatives (the warm DE's, BM25's), in <out>/seed<s>/teachers_<neg>_<frac>.
     Their step counts scale with the fraction (the same number of epochs at every fraction), so that a small
     fraction is not simply overfitted. Each is judged on the dev queries' C(q): p+ in the top 1 and top 5, reading
     the real query and another query of its language (a teacher that ranks as well without the query reads a
     prior of the candidates, not the query).
Then claims.md (and claims.json): claim 1's table and a text figure; claim 2 (Ren et al.: alignment helps most
where a language has few training queries) as qg_kd_align against qg_kd per language; and every student against
de_ft (the distillation stage with alpha = 0): per-query paired differences on the test queries with a 95 %
bootstrap interval and a randomization p-value (evaluate.compare), per seed and pooled over seeds (each
(seed, query) a unit), beside the mean and spread of each system over seeds. Each claim is said to hold or not, by
the rule printed with it. Rerunning the same command resumes; everything per seed is train.py's own resumable work.
"""
import argparse
import json
import math
import os
import sys
import time

import cli
import data
import evaluate
import train
from model import DualEncoder
from outdir import OutDir, Stop, atomic_write, log
from report import SYSTEMS
from teacher import CrossEncoder, QueryGenerator

NEGATIVES = ("de", "bm25")
UPSTREAM = ("tokenizer.json", "pretrain.pt", "qg_pretrain.pt", "de_bm25.pt", "de.pt")  # shared by the teacher variants
METRICS = ["mrr@10", "recall@100"]


def mean_sd(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0


def fmt(xs):
    m, sd = mean_sd(xs)
    return f"{m:.3f} ± {sd:.3f}" if len(xs) > 1 else f"{m:.3f}"


def teacher_variant(flags, root, neg, frac):
    """Claim 1's teachers on a fraction of the training queries with one kind of negatives -> their dev rates."""
    base = cli.parse_args(flags, "", train.Config, train.PRESETS, train.NAMES, train.SYNTH_SIZE)[1]
    if neg == base.teacher_negatives and frac == base.teacher_frac:  # the pipeline's own teachers
        return json.load(open(os.path.join(root, "teachers.json")))["dev"]
    sub = os.path.join(root, f"teachers_{neg}_{frac:g}")
    done = os.path.join(sub, "teachers_dev.json")
    if os.path.exists(done):
        return json.load(open(done))
    os.makedirs(sub, exist_ok=True)
    for name in UPSTREAM:  # the same tokenizer, pre-training and warm DE as the seed's pipeline
        if not os.path.exists(os.path.join(sub, name)):
            os.symlink(os.path.abspath(os.path.join(root, name)), os.path.join(sub, name))
    scaled = [f"--{n}-steps" for n in ("qg", "rank", "ce")]
    steps = [max(1, math.ceil(frac * getattr(base, f"{n}_steps"))) for n in ("qg", "rank", "ce")]
    flags = [*flags, "--out", sub, "--teacher-frac", str(frac), "--teacher-negatives", neg,
             *[x for pair in zip(scaled, map(str, steps)) for x in pair]]
    if train.main([*flags, "--stages", "qg,ce"]) != 0:
        raise Stop(f"{sub}: the teachers' training failed (see above)")
    args, cfg, _ = cli.parse_args(flags, "", train.Config, train.PRESETS, train.NAMES, train.SYNTH_SIZE)
    out, ds = OutDir(sub), data.load(args.data)
    d = train.stage_tokenizer(cfg, ds, out)
    scorers = [out.load_model(DualEncoder, "de.pt"), out.load_model(QueryGenerator, "qg.pt"), out.load_model(CrossEncoder, "ce.pt")]
    rates = d.teacher_rates(*scorers, [q for q in ds.qrels["dev"] if d.pos[q]], cfg.kd_k, cfg.seed, cfg.log_every,
                            cfg.kd_union)
    atomic_write(done, json.dumps(rates, indent=1) + "\n")
    return rates


def pooled(qrels, runs_a, runs_b, lang, seeds):
    """evaluate.compare over every (seed, query) pair: the qids of seed s become 's:qid'."""
    tag = lambda s, d: {f"{s}:{q}": v for q, v in d.items()}  # noqa: E731
    qr = {k: v for s in seeds for k, v in tag(s, qrels).items()}
    a = {k: v for s in seeds for k, v in tag(s, runs_a[s]).items()}
    b = {k: v for s in seeds for k, v in tag(s, runs_b[s]).items()}
    return evaluate.compare(qr, a, b, METRICS, {f"{s}:{q}": x for s in seeds for q, x in lang.items()})


def comparison_table(title, qrels, runs, a, b, lang, langs, n_train, seeds):
    """Rows: all and each language; per metric the diff (b - a) and 95 % interval per seed, pooled, and p."""
    per_seed = {s: evaluate.compare(qrels, runs[a][s], runs[b][s], METRICS, lang) for s in seeds}
    pool = pooled(qrels, runs[a], runs[b], lang, seeds)
    lines = [f"### {title}: {b} - {a} (test queries)", "",
             "| group | metric | " + " | ".join(f"seed {s}" for s in seeds) + " | pooled over seeds | p |",
             "|---" * (4 + len(seeds)) + "|"]
    for g in ["all"] + langs:
        label = "all" if g == "all" else f"{g} ({n_train[g]})"
        for m in METRICS:
            cell = lambda r: f"{r['diff']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"  # noqa: E731
            pick = lambda res: res["all"][m] if g == "all" else res["per_lang"][g][m]  # noqa: E731
            lines.append(f"| {label} | {m} | " + " | ".join(cell(pick(per_seed[s])) for s in seeds) +
                         f" | {cell(pick(pool))} | {pick(pool)['p']:.3g} |")
    return lines + [""], pool


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--fracs", default="0.1,0.3,1", help="claim 1's shares of each language's training queries")
    ap.add_argument("--preset", default="tiny", choices=list(train.PRESETS), help="train.py's preset")
    ap.add_argument("--data", help="data set (default: the preset's synthetic benchmark)")
    ap.add_argument("--out", default="out/claims", help="everything, per seed (default out/claims)")
    ap.add_argument("--threads", type=int, help="CPU threads")
    args, extra = ap.parse_known_args(argv)  # anything else goes to train.py (e.g. --kd-steps 200)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        fracs = sorted({float(f) for f in args.fracs.split(",")})
        if not seeds or any(s < 0 for s in seeds) or not fracs or any(not 0 < f <= 1 for f in fracs) or 1.0 not in fracs:
            raise ValueError
    except ValueError:
        print("error: --seeds takes integers >= 0 and --fracs numbers in (0, 1] including 1, comma-separated", file=sys.stderr)
        return 1
    t0 = time.time()
    try:
        return claims(args, seeds, fracs, extra, t0)
    except Stop as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def claims(args, seeds, fracs, extra, t0):
    base = ["--preset", args.preset, *(["--data", args.data] if args.data else []),
            *(["--threads", str(args.threads)] if args.threads else []), *extra]
    rates, results, runs = {}, {}, {name: {} for name in SYSTEMS}
    for s in seeds:
        flags, root = [*base, "--seed", str(s)], os.path.join(args.out, f"seed{s}")
        log("claims", f"seed {s}: the pipeline in {root} ({time.time() - t0:.0f}s so far)")
        if train.main([*flags, "--out", root]) != 0:
            raise Stop(f"{root}: the pipeline failed (see above)")
        for neg in NEGATIVES:
            for frac in fracs:
                log("claims", f"seed {s}: teachers on {frac:g} of the training queries, {neg} negatives")
                rates[s, neg, frac] = teacher_variant(flags, root, neg, frac)
        results[s] = json.load(open(os.path.join(root, "results.json")))
        for name in SYSTEMS:
            runs[name][s] = evaluate.read_run(os.path.join(root, "runs", f"{name}.test.trec"))
    a, cfg, _ = cli.parse_args(base, "", train.Config, train.PRESETS, train.NAMES, train.SYNTH_SIZE)
    ds = data.load(a.data)
    qrels, n_train = ds.qrels["test"], {x: sum(ds.lang[q] == x for q in ds.qrels["train"]) for x in ds.languages()}
    langs = ds.languages()
    lines = [f"# The paper's claims on {a.data}, seeds {', '.join(map(str, seeds))}", "",
             f"`python claims.py --seeds {','.join(map(str, seeds))} --fracs {','.join(f'{f:g}' for f in fracs)} "
             f"--preset {args.preset}{' ' + ' '.join(extra) if extra else ''}`: {(time.time() - t0) / 60:.0f} min of wall time "
             f"in this invocation ({os.cpu_count()} cores; work already done by an earlier invocation is not redone). "
             f"Test: {len(qrels)} queries; dev: {len(ds.qrels.get('dev', {}))}; training queries per language: "
             + ", ".join(f"{x} {n_train[x]}" for x in langs) + ".", ""]
    lines += ["## Every system, mean ± sd over seeds (test)", "",
              "| system | metric | all | " + " | ".join(f"{x} ({n_train[x]})" for x in langs) + " |", "|---" * (3 + len(langs)) + "|"]
    hybrid = ["hybrid"] if all("hybrid" in results[s]["systems"] for s in seeds) else []  # BM25 + the best on dev
    for name in ["bm25", *SYSTEMS, *hybrid]:
        for m in METRICS:
            rows = [results[s]["systems"][name] for s in seeds]
            vals = lambda g: [(r["all"] if g == "all" else r["per_lang"][g])[m] for r in rows]  # noqa: E731
            lines.append(f"| {name} | {m} | {fmt(vals('all'))} | " + " | ".join(fmt(vals(x)) for x in langs) + " |")
    lines += [""] + claim1(rates, seeds, fracs, cfg.kd_k)
    high = [x for x in langs if n_train[x] == max(n_train.values())]
    low = [x for x in langs if 0 < n_train[x] < max(n_train.values())]
    table, pool = comparison_table("Claim 2: alignment", qrels, runs, "qg_kd", "qg_kd_align", ds.lang, langs, n_train, seeds)
    lines += ["## Claim 2: alignment helps most where a language has few training queries", "",
              "Rule: it holds if, pooled over seeds, `qg_kd_align` beats `qg_kd` on mrr@10 in every low-resource "
              f"language ({', '.join(low)}) with a 95 % interval above 0, and by more than in the high-resource ones "
              f"({', '.join(high)}).", "", *table]
    gain = {x: pool["per_lang"][x]["mrr@10"] for x in langs}
    holds2 = all(gain[x]["ci"][0] > 0 for x in low) and min(gain[x]["diff"] for x in low) > max(gain[x]["diff"] for x in high)
    lines += [f"**Claim 2 {'holds' if holds2 else 'does not hold'} here**: mrr@10 gain pooled over seeds "
              + ", ".join(f"{x} {gain[x]['diff']:+.3f} [{gain[x]['ci'][0]:+.3f}, {gain[x]['ci'][1]:+.3f}]" for x in langs) + ".", ""]
    lines += ["## Every student against its control de_ft (the distillation stage with alpha = 0)", ""]
    verdicts = {}
    for name in ["ce_kd", "qg_kd", "qg_kd_align", "drdecr"]:
        if all(runs[name].get(s) for s in seeds):
            table, pool = comparison_table(name, qrels, runs, "de_ft", name, ds.lang, langs, n_train, seeds)
            lines += table
            verdicts[name] = [x for x in langs if pool["per_lang"][x]["mrr@10"]["ci"][0] > 0]
    lines += ["Languages where a student beats de_ft on mrr@10 with a pooled 95 % interval above 0: " +
              "; ".join(f"{n}: {', '.join(v) or 'none'}" for n, v in verdicts.items()) + ".", ""]
    os.makedirs(args.out, exist_ok=True)
    atomic_write(os.path.join(args.out, "claims.md"), "\n".join(lines))
    atomic_write(os.path.join(args.out, "claims.json"), json.dumps(
        {"seeds": seeds, "fracs": fracs, "teachers": {f"{s}/{n}/{f:g}": r for (s, n, f), r in rates.items()}}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


def claim1(rates, seeds, fracs, kd_k):
    """Claim 1's table (mean ± sd over seeds of each teacher's dev rates) and a text figure of the top-1 rate."""
    lines = ["## Claim 1: a QG teacher needs fewer training queries and weaker negatives than a cross-encoder", "",
             f"Dev queries, C(q) = p+ and the warm DE's top {kd_k} (chance of p+ first {1 / (1 + kd_k):.3f}); "
             "'blind': the same C(q) scored reading another query of the same language. Rule: it holds if the QG "
             "ranks p+ first more often than the CE in every seed at the smallest fraction and with BM25's negatives, "
             "and its real-query rate stays above its blind rate.", "",
             "| negatives | share of training queries | QG top 1 | QG top 5 | QG blind top 1 | CE top 1 | CE top 5 | CE blind top 1 | warm DE top 1 |",
             "|---" * 9 + "|"]
    get = lambda s, neg, f, key, who: rates[s, neg, f][key][who]["all"]  # noqa: E731
    for neg in NEGATIVES:
        for f in fracs:
            cells = [fmt([get(s, neg, f, key, who) for s in seeds]) for who, key in
                     [("qg", "top1"), ("qg", "top5"), ("qg", "blind_top1"), ("ce", "top1"), ("ce", "top5"),
                      ("ce", "blind_top1"), ("de", "top1")]]
            lines.append(f"| {neg} | {f:g} | " + " | ".join(cells) + " |")
    lines += ["", "Top-1 rate on dev, mean over seeds (each # is 0.02; `|` marks chance):", "```"]
    chance, width = 1 / (1 + kd_k), 1 + int(50 * max(r[k][w]["all"] for r in rates.values() for k in ("top1",) for w in ("qg", "ce")))
    for neg in NEGATIVES:
        for f in fracs:
            for who in ("qg", "ce"):
                v = sum(get(s, neg, f, "top1", who) for s in seeds) / len(seeds)
                bar = "".join("|" if abs(i * 0.02 - chance) < 0.01 else ("#" if i * 0.02 < v else " ") for i in range(width))
                lines.append(f"{neg:4s} {f:4g} {who.upper():2s} {bar} {v:.3f}")
    lines.append("```")
    small = min(fracs)
    qg_wins = lambda neg, f: all(get(s, neg, f, "top1", "qg") > get(s, neg, f, "top1", "ce") for s in seeds)  # noqa: E731
    reads = all(get(s, neg, f, "top1", "qg") > get(s, neg, f, "blind_top1", "qg") for s in seeds for neg in NEGATIVES for f in fracs)
    holds = qg_wins("de", small) and qg_wins("bm25", 1.0) and reads
    lines += ["", f"**Claim 1 {'holds' if holds else 'does not hold'} here**: the QG ranks better than the CE in every "
              f"seed at {small:g} of the data: {'yes' if qg_wins('de', small) else 'no'}; with BM25's negatives: "
              f"{'yes' if qg_wins('bm25', 1.0) else 'no'}; the QG reads the query (real above blind in every cell and "
              f"seed): {'yes' if reads else 'no'}.", ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
