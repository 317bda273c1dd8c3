"""The eval stage of train.py and its `--encode`: every trained dual-encoder (and BM25) searched over the whole
corpus for the dev and test queries, TREC runs written, metrics computed (evaluate.py), results.json and
results.md. The same search with any saved DE (`python train.py --encode out/tiny/qg_kd.pt --split test`).
"""
import dataclasses
import json
import os

import data
import dist
import evaluate
import search
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
    passages = {pid: ds.passage_text(i) for i, pid in enumerate(ds.pids)} if ds.answers else None
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
            search.write_trec(path, splits[split], ds.pids, scores.cpu(), ids.cpu(), name)
            res = evaluate.evaluate(ds.qrels[split], evaluate.read_run(path), metrics, ds.lang, ds.answers, passages)
            results[split][name] = {"all": res["all"], "per_lang": res["per_lang"]}
            log("eval", f"{split} {name:12s} " + " ".join(f"{m} {res['all'][m]:.3f}" for m in metrics))
    split = "test" if "test" in results else "dev"
    summary = {"config": dataclasses.asdict(cfg), "data": ds.root, "split": split, "systems": results[split],
               "dev": results.get("dev", {})}
    out.write_text("results.json", json.dumps(summary, indent=1) + "\n")
    teachers = json.load(open(out.path("teachers.json"))) if out.exists("teachers.json") else None
    out.write_text("results.md", results_markdown(cfg, d, results[split], metrics, split, teachers))
    print(open(out.path("results.md"), encoding="utf-8").read())


def results_markdown(cfg, d, systems, metrics, split, teachers):
    """One table per metric: systems x (all, each language with its number of training queries); then, when the kd
    stage measured them, how often each teacher ranks p+ first among the warm DE's candidates of dev queries."""
    langs = sorted({x for r in systems.values() for x in r["per_lang"]})
    n_train = {x: sum(d.ds.lang[q] == x for q in d.train) for x in langs}
    head = ["| system | all | " + " | ".join(f"{x} ({n_train[x]})" for x in langs) + " |", "|---" * (2 + len(langs)) + "|"]
    row = lambda name, values: f"| {name} | " + " | ".join(f"{values.get(x, float('nan')):.3f}" for x in ["all"] + langs) + " |"  # noqa: E731
    lines = [f"# Results on {d.ds.root} ({split})", ""]
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


def encode_only(ckpt, ds, split, run_path):
    """--encode: a TREC run of one split's queries with a saved DE, tokenised as in the run that trained it (its
    folder's config.json and tokenizer.json)."""
    out = OutDir(os.path.dirname(os.path.abspath(ckpt)))
    for path in (ckpt, out.path("config.json"), out.path("tokenizer.json")):
        if not os.path.exists(path):
            raise Stop(f"{path}: not found (--encode takes a checkpoint in the output folder of a run)")
    if split not in ds.qrels:
        raise Stop(f"{ds.root}/qrels/{split}.tsv: not found (--split)")
    made = json.load(open(out.path("config.json")))
    d = EncodedData(ds, data.load_tokenizer(out.path("tokenizer.json")), made["max_len_q"], made["max_len_p"], made["pivot"])
    qids = list(ds.qrels[split])
    scores, ids = d.retrieve(made["eval_k"], out.load_model(DualEncoder, os.path.abspath(ckpt)), {split: qids})[split]
    if dist.is_main():
        search.write_trec(run_path, qids, ds.pids, scores.cpu(), ids.cpu(), os.path.basename(ckpt))
    print(f"wrote {run_path}")
