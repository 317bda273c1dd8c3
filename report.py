"""The eval stage of train.py and its `--encode`: every trained dual-encoder (and BM25) searched over the whole
corpus for the dev and test queries, TREC runs written, metrics computed (evaluate.py), results.json and
results.md. The same search with any saved DE (`python train.py --encode out/tiny/qg_kd.pt --split test`).
"""
import dataclasses
import json
import os

import dist
import evaluate
from encoded import EncodedData
from model import DualEncoder
from outdir import OutDir, Stop, log

SYSTEMS = ["de", "de_ft", "ce_kd", "qg_kd", "qg_kd_align", "drdecr"]  # the dual-encoders compared, in pipeline order
METRICS = ["recall@10", "recall@100", "mrr@10", "ndcg@10"]


def stage_eval(cfg, d, out):
    """Every system (and BM25) on dev and test: runs/<system>.<split>.trec, results.json, results.md."""
    ds = d.ds
    os.makedirs(out.path("runs"), exist_ok=True)
    metrics = METRICS + (["r@2kt", "r@5kt"] if ds.answers else [])
    passages = {pid: ds.texts[i] for i, pid in enumerate(ds.pids)} if ds.answers else None  # R@kt reads texts, no titles
    splits = d.eval_splits()
    results = {s: {} for s in splits}
    for name in ["bm25"] + [s for s in SYSTEMS if out.exists(f"{s}.pt")]:
        if name == "bm25":
            if not dist.is_main():  # under torchrun rank 0 alone searches with BM25, writes runs and scores them
                continue
            found = {s: d.bm25().search(d.query_tokens(qids), min(cfg.eval_k, len(ds.pids))) for s, qids in splits.items()}
        else:
            found = d.retrieve(cfg.eval_k, out.load_model(DualEncoder, f"{name}.pt"), splits)  # every rank: its share
            if not dist.is_main():
                continue
        for split, (scores, ids) in found.items():
            path = out.path(f"runs/{name}.{split}.trec")
            evaluate.write_trec(path, splits[split], ds.pids, scores.cpu(), ids.cpu(), name)
            res = evaluate.evaluate(ds.qrels[split], evaluate.read_run(path), metrics, ds.lang, ds.answers, passages)
            results[split][name] = {"all": res["all"], "per_lang": res["per_lang"]}
            log("eval", f"{split} {name:12s} " + " ".join(f"{m} {res['all'][m]:.3f}" for m in metrics))
    hybrid = hybrid_row(cfg, d, out, splits, results, metrics, passages) if dist.is_main() else None
    split = "test" if "test" in results else "dev"
    summary = {"config": dataclasses.asdict(cfg), "data": ds.root, "split": split, "systems": results[split],
               "dev": results.get("dev", {}), "hybrid": hybrid}
    out.write_text("results.json", json.dumps(summary, indent=1) + "\n")
    teachers = out.read_json("teachers.json", "JSON") if out.exists("teachers.json") else None
    out.write_text("results.md", results_markdown(cfg, d, results[split], metrics, split, teachers, hybrid))
    print(open(out.path("results.md"), encoding="utf-8").read())


def fuse(sparse, dense, w):
    """Score fusion of two runs {qid: {pid: score}}: per query each run's scores are min-max normalised to [0, 1]
    over its own list (a passage missing from a list gets 0 there), then w * dense + (1 - w) * sparse."""
    def norm(scores):
        lo, hi = min(scores.values(), default=0.0), max(scores.values(), default=0.0)
        return {p: (s - lo) / (hi - lo) if hi > lo else 1.0 for p, s in scores.items()}
    fused = {}
    for q in sparse.keys() | dense.keys():
        a, b = norm(sparse.get(q, {})), norm(dense.get(q, {}))
        fused[q] = {p: w * b.get(p, 0.0) + (1 - w) * a.get(p, 0.0) for p in a.keys() | b.keys()}
    return fused


def hybrid_row(cfg, d, out, splits, results, metrics, passages):
    """The `hybrid` system: BM25 fused with the dense system that is best on dev (recall@100, then mrr@10), the
    weight w in {0, 0.1, ..., 1} chosen on dev by the same order (0.5 without a dev split); runs/hybrid.<split>.trec
    and a row in results, like every system (equal fused scores: the lower passage row first, whatever the hash
    seed). -> {"dense": name, "weight": w}."""
    ds, dense = d.ds, [n for n in SYSTEMS if out.exists(f"{n}.pt")]
    if not dense:
        return None
    read = lambda name, split: evaluate.read_run(out.path(f"runs/{name}.{split}.trec"))  # noqa: E731
    key = lambda res: (res["all"]["recall@100"], res["all"]["mrr@10"])  # noqa: E731
    w, best = 0.5, dense[0]
    if "dev" in results:
        best = max(dense, key=lambda n: key(results["dev"][n]))
        sparse, dense_run = read("bm25", "dev"), read(best, "dev")
        w = max((i / 10 for i in range(11)), key=lambda w: key(evaluate.evaluate(
            ds.qrels["dev"], fuse(sparse, dense_run, w), ["recall@100", "mrr@10"])))
    row = {p: i for i, p in enumerate(ds.pids)}
    for split, qids in splits.items():
        fused = fuse(read("bm25", split), read(best, split), w)
        ranked = [sorted(fused.get(q, {}).items(), key=lambda x: (-x[1], row[x[0]]))[:cfg.eval_k] for q in qids]
        k = max(map(len, ranked), default=0)
        ids = [[row[p] for p, _ in r] + [-1] * (k - len(r)) for r in ranked]
        scores = [[s for _, s in r] + [0.0] * (k - len(r)) for r in ranked]
        path = out.path(f"runs/hybrid.{split}.trec")
        evaluate.write_trec(path, qids, ds.pids, scores, ids, "hybrid")
        res = evaluate.evaluate(ds.qrels[split], evaluate.read_run(path), metrics, ds.lang, ds.answers, passages)
        results[split]["hybrid"] = {"all": res["all"], "per_lang": res["per_lang"]}
    log("eval", f"hybrid: BM25 and {best}, weight {w:.1f} on the dense side (chosen on dev)")
    return {"dense": best, "weight": w}


def results_markdown(cfg, d, systems, metrics, split, teachers, hybrid):
    """One table per metric: systems x (all, each language with its number of training queries); then, when the kd
    stage measured them, how often each teacher ranks p+ first among the warm DE's candidates of dev queries."""
    langs = sorted({x for r in systems.values() for x in r["per_lang"]})
    n_train = {x: sum(d.ds.lang[q] == x for q in d.train) for x in langs}
    head = ["| system | all | " + " | ".join(f"{x} ({n_train[x]})" for x in langs) + " |", "|---" * (2 + len(langs)) + "|"]
    row = lambda name, values: f"| {name} | " + " | ".join(f"{values.get(x, float('nan')):.3f}" for x in ["all"] + langs) + " |"  # noqa: E731
    lines = [f"# Results on {d.ds.root} ({split})", ""]
    if hybrid:
        lines += [f"hybrid: BM25 fused with {hybrid['dense']}, weight {hybrid['weight']:.1f} on the dense side (chosen on dev).", ""]
    for m in metrics:
        lines += [f"## {m}", "", *head]
        lines += [row(name, {"all": r["all"][m], **{x: v[m] for x, v in r["per_lang"].items()}}) for name, r in systems.items()]
        lines.append("")
    if teachers:  # chance: 1 / (1 + kd_k)
        lines += ["## teachers: share of dev queries whose positive each ranks first among C(q) (p+ and the warm DE's "
                  f"top {cfg.kd_k}; chance {1 / (1 + cfg.kd_k):.3f}), reading the query and reading another query of "
                  "its language (query-blind)", "", *head]
        for name in teachers["dev"]["top1"]:
            lines += [row(name, teachers["dev"]["top1"][name]), row(f"{name}, blind", teachers["dev"]["blind_top1"][name])]
        lines.append("")
    return "\n".join(lines)


def encode_only(ckpt, ds, split, run_path, k, makers=None):
    """--encode: a TREC run of one split's queries, the top k passages of each, with a saved DE, tokenised as in the
    run that trained it (its folder's config.json and tokenizer.json). Every input is checked before the search."""
    if not os.path.isfile(ckpt):
        raise Stop(f"{ckpt}: {'not a file' if os.path.exists(ckpt) else 'not found'} (--encode takes a checkpoint in "
                   "the output folder of a run)")
    out = OutDir(os.path.dirname(os.path.abspath(ckpt)), makers)
    for path in (out.path("config.json"), out.path("tokenizer.json")):
        if not os.path.exists(path):
            raise Stop(f"{path}: not found (--encode takes a checkpoint in the output folder of a run)")
    if split not in ds.qrels:
        raise Stop(f"{ds.root}/qrels/{split}.tsv: not found (--split)")
    folder = os.path.dirname(os.path.abspath(run_path))
    if os.path.isdir(run_path) or not os.path.isdir(folder):
        raise Stop(f"{run_path}: {'a folder' if os.path.isdir(run_path) else f'no folder {folder}'} (--run names the file to write)")
    made = out.settings()
    if missing := [key for key in ("max_len_q", "max_len_p", "pivot") if key not in made]:
        raise Stop(f"{out.path('config.json')}: no {missing[0]!r} setting")
    de = out.load_model(DualEncoder, os.path.abspath(ckpt))
    d = EncodedData(ds, out.load_tokenizer(), made["max_len_q"], made["max_len_p"], made["pivot"])
    qids = list(ds.qrels[split])
    scores, ids = d.retrieve(k, de, {split: qids})[split]
    tag = "_".join(os.path.basename(ckpt).split())  # a TREC run's tag is one word
    try:
        if dist.is_main():
            evaluate.write_trec(run_path, qids, ds.pids, scores.cpu(), ids.cpu(), tag)
    except OSError as e:
        raise Stop(f"{run_path}: cannot write ({e.strerror}) (--run)") from None
    print(f"wrote {run_path}")
