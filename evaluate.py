"""Retrieval metrics with trec_eval semantics (METHOD.md, Metrics), strict qrels and run readers, and their CLI.

    qrels = read_qrels("data/tiny/qrels/test.tsv")      # {qid: {docid: relevance}}, BEIR tsv or TREC qrels
    run = read_run("out/runs/de.trec")                  # {qid: {docid: score}}, a TREC run
    result = evaluate(qrels, run, ["recall@100", "ndcg@10"], lang={"q1": "sw", ...})
    print(format_table(result, ["recall@100", "ndcg@10"]))  # rows: all + each language

    python evaluate.py --qrels data/tiny/qrels/test.tsv --run run.trec --queries data/tiny/queries.jsonl \\
        --metrics recall@10,recall@100,mrr@10,ndcg@10,map,success@5,r@2kt \\
        --answers data/tiny/answers.jsonl --corpus data/tiny/corpus.jsonl [--json]

Conventions (those of trec_eval, so the numbers equal pytrec_eval's):
- A query's ranking is its run entries sorted by score descending, then document id descending (string order);
  the rank column of the run is ignored. Relevant means relevance > 0; documents missing from the qrels are not.
- Queries of the qrels with no relevant document are skipped. Queries of the qrels absent from the run count as 0
  on every metric (trec_eval -c). Queries of the run absent from the qrels are ignored.
- Every metric is a mean over the evaluated queries: overall ("all") and per language.

Metrics, for one query with ranking d_1, d_2, ..., relevance rel(d), R = {d : rel(d) > 0}:
    recall@k     |R in top k| / |R|                          (trec_eval recall_k)
    precision@k  |R in top k| / k                            (P_k)
    success@k    1 if some d in R is in the top k, else 0    (success_k)
    mrr@k        1 / rank of the first d in R if <= k, else 0  (recip_rank of the run cut at k)
    ndcg@k       sum_{i<=k} g(d_i) / log2(i + 1), divided by the same sum over the ideal ordering of the qrels,
                 gain g = the relevance grade (0 if not > 0)  (ndcg_cut_k)
    map, map@k   sum over ranks i (<= k) with d_i in R of precision@i, divided by |R|  (map, map_cut_k)
    r@2kt, r@5kt answer recall at 2,000 / 5,000 tokens (XOR-TyDi, MKQA): the passage texts of the ranking are split
                 on whitespace and their tokens taken in rank order up to the budget (the last passage truncated);
                 1 if some gold answer, lower-cased with its whitespace collapsed to single spaces, is a substring
                 of those tokens lower-cased and joined by single spaces (so a match may span two passages);
                 0 if the query has no answer string.
"""
import argparse
import json
import math
import os
import re
import sys


class EvalError(ValueError):
    """A problem in an input or a request, worded as `path:line: problem` where a file is concerned."""


# ----------------------------------------------------------------------------- readers
def _lines(path):
    """Yield (line number, line) of the non-blank lines of a UTF-8 text file."""
    if not os.path.isfile(path):
        raise EvalError(f"{path}:0: file not found")
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise EvalError(f"{path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if line.strip():
                yield i, line


def read_qrels(path):
    """-> {qid: {docid: int relevance}} of a BEIR qrels tsv (header `query-id corpus-id score`, then 3 tab-separated
    fields a line) or a TREC qrels file (`qid iteration docid relevance`, whitespace-separated, no header), told
    apart by the first line. Relevance must be an integer; a repeated (qid, docid) pair is an error."""
    qrels, fmt = {}, None
    for i, line in _lines(path):
        if fmt is None:
            fmt = "beir" if line.split() == ["query-id", "corpus-id", "score"] else "trec"
            if fmt == "beir":
                continue
            if len(line.split()) != 4:
                raise EvalError(f"{path}:{i}: expected the BEIR header 'query-id<TAB>corpus-id<TAB>score' or a "
                                f"TREC qrels line 'qid 0 docid relevance'")
        parts = line.split("\t") if fmt == "beir" else line.split()
        if len(parts) != (3 if fmt == "beir" else 4):
            raise EvalError(f"{path}:{i}: expected {3 if fmt == 'beir' else 4} "
                            f"{'tab-separated' if fmt == 'beir' else 'whitespace-separated'} fields, got {len(parts)}")
        q, d, rel = (parts[0], parts[1], parts[2]) if fmt == "beir" else (parts[0], parts[2], parts[3])
        if not q.strip() or not d.strip():
            raise EvalError(f"{path}:{i}: empty query or document id")
        try:
            rel = int(rel)
        except ValueError:
            raise EvalError(f"{path}:{i}: relevance {rel!r} is not an integer") from None
        if d in qrels.setdefault(q, {}):
            raise EvalError(f"{path}:{i}: duplicate judgement of ({q!r}, {d!r})")
        qrels[q][d] = rel
    if not qrels:
        raise EvalError(f"{path}:1: no judgements")
    return qrels


def read_run(path):
    """-> {qid: {docid: float score}} of a TREC run, `qid Q0 docid rank score tag` a line (6 whitespace-separated
    fields, an integer rank, a finite score). A repeated (qid, docid) pair is an error. An empty file is an empty
    run (every query then scores 0)."""
    run = {}
    for i, line in _lines(path):
        parts = line.split()
        if len(parts) != 6:
            raise EvalError(f"{path}:{i}: expected 6 fields 'qid Q0 docid rank score tag', got {len(parts)}")
        q, _, d, rank, score, _ = parts
        try:
            int(rank)
        except ValueError:
            raise EvalError(f"{path}:{i}: rank {rank!r} is not an integer") from None
        try:
            score = float(score)
        except ValueError:
            raise EvalError(f"{path}:{i}: score {score!r} is not a number") from None
        if not math.isfinite(score):
            raise EvalError(f"{path}:{i}: score {parts[4]!r} is not finite")
        if d in run.setdefault(q, {}):
            raise EvalError(f"{path}:{i}: document {d!r} appears twice for query {q!r}")
        run[q][d] = score
    return run


def read_jsonl(path, field, check, what):
    """-> {_id: row[field]} of a JSON-lines file (rows without `field` left out); every row needs a string `_id`,
    and check(row[field]) must hold where the field is present, else `path:line: field must be <what>`."""
    out = {}
    for i, line in _lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{path}:{i}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("_id"), str):
            raise EvalError(f"{path}:{i}: expected a JSON object with a string '_id'")
        if field in row:
            if not check(row[field]):
                raise EvalError(f"{path}:{i}: field {field!r} must be {what}")
            out[row["_id"]] = row[field]
    return out


# ----------------------------------------------------------------------------- metrics of one query
def ranking(scores):
    """{docid: score} -> docids by score descending, then docid descending (trec_eval's order)."""
    return [d for d, _ in sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def recall(ranked, rels, k):
    return sum(rels.get(d, 0) > 0 for d in ranked[:k]) / sum(r > 0 for r in rels.values())


def precision(ranked, rels, k):
    return sum(rels.get(d, 0) > 0 for d in ranked[:k]) / k


def success(ranked, rels, k):
    return float(any(rels.get(d, 0) > 0 for d in ranked[:k]))


def mrr(ranked, rels, k):
    return next((1 / i for i, d in enumerate(ranked[:k], 1) if rels.get(d, 0) > 0), 0.0)


def ndcg(ranked, rels, k):
    dcg = sum(max(rels.get(d, 0), 0) / math.log2(i + 1) for i, d in enumerate(ranked[:k], 1))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    return dcg / sum(g / math.log2(i + 1) for i, g in enumerate(ideal, 1))


def average_precision(ranked, rels, k=None):
    hits, total = 0, 0.0
    for i, d in enumerate(ranked[:k], 1):
        if rels.get(d, 0) > 0:
            hits += 1
            total += hits / i
    return total / sum(r > 0 for r in rels.values())


def answer_recall(ranked, answers, passages, tokens):
    """1.0 if a gold answer occurs in the first `tokens` whitespace tokens of the ranked passages (see the module
    docstring for the exact rule), else 0.0."""
    taken = []
    for d in ranked:
        if len(taken) >= tokens:
            break
        if d not in passages:
            raise EvalError(f"no passage text for document {d!r} (needed by r@{tokens // 1000}kt)")
        taken += passages[d].split()[:tokens - len(taken)]
    text = " ".join(taken).lower()
    golds = [" ".join(a.split()).lower() for a in answers]
    return float(any(g and g in text for g in golds))


CUT = {"recall": recall, "precision": precision, "success": success, "mrr": mrr, "ndcg": ndcg,
       "map": average_precision}


def parse_metric(name):
    """'ndcg@10' -> ('ndcg', 10); 'map' -> ('map', None); 'r@2kt' -> ('kt', 2000). Unknown names: EvalError."""
    m = re.fullmatch(r"(recall|precision|success|mrr|ndcg|map)@(\d+)|map|r@(\d+)kt", name)
    if not m or (m.group(2) and int(m.group(2)) < 1) or (m.group(3) and int(m.group(3)) < 1):
        raise EvalError(f"unknown metric {name!r}; known: recall@k, precision@k, success@k, mrr@k, ndcg@k, map, "
                        f"map@k, r@2kt, r@5kt (k >= 1)")
    if name == "map":
        return "map", None
    if m.group(3):
        return "kt", 1000 * int(m.group(3))
    return m.group(1), int(m.group(2))


# ----------------------------------------------------------------------------- evaluation
def evaluate(qrels, run, metrics, lang=None, answers=None, passages=None):
    """Mean of each metric over the queries of qrels with a relevant document, overall and per language.

    qrels {qid: {docid: rel}}, run {qid: {docid: score}}, metrics: names (or one comma-separated string);
    lang {qid: language} or None; answers {qid: [str]} and passages {docid: text} for r@Nkt.
    -> {"all": {metric: value}, "per_lang": {lang: {metric: value}} ({} without lang), "n_queries": n}
    """
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m]
    parsed = {name: parse_metric(name) for name in metrics}
    if any(kind == "kt" for kind, _ in parsed.values()) and (answers is None or passages is None):
        raise EvalError("r@Nkt metrics need answers and passage texts (--answers and --corpus)")
    qids = sorted(q for q, rels in qrels.items() if any(r > 0 for r in rels.values()))
    if not qids:
        raise EvalError("no query of the qrels has a relevant document")
    if lang is not None:
        missing = [q for q in qids if q not in lang]
        if missing:
            raise EvalError(f"query {missing[0]!r} has no language ({len(missing)} such queries)")
    per_query = {}
    for q in qids:
        ranked = ranking(run.get(q, {}))
        per_query[q] = {name: answer_recall(ranked, answers.get(q, []), passages, k) if kind == "kt"
                        else CUT[kind](ranked, qrels[q], k) for name, (kind, k) in parsed.items()}

    def mean(group):
        return {name: sum(per_query[q][name] for q in group) / len(group) for name in metrics}

    langs = sorted({lang[q] for q in qids}) if lang is not None else []
    return {"all": mean(qids), "per_lang": {l: mean([q for q in qids if lang[q] == l]) for l in langs},
            "n_queries": len(qids)}


def format_table(result, metrics):
    """An aligned text table: one row for all queries and one per language, one column per metric."""
    rows = [("all", result["all"])] + list(result["per_lang"].items())
    width = max(len(name) for name, _ in rows)
    cols = [max(len(m), 6) for m in metrics]
    lines = ["".ljust(width) + "".join(f"  {m:>{w}}" for m, w in zip(metrics, cols))]
    for name, values in rows:
        lines.append(name.ljust(width) + "".join(f"  {values[m]:>{w}.4f}" for m, w in zip(metrics, cols)))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qrels", required=True, help="BEIR qrels tsv or TREC qrels")
    ap.add_argument("--run", required=True, help="TREC run")
    ap.add_argument("--metrics", default="recall@10,recall@100,mrr@10,ndcg@10,map,success@5",
                    help="comma-separated metric names")
    ap.add_argument("--queries", help="BEIR queries.jsonl with 'lang': adds one row per language")
    ap.add_argument("--answers", help="answers.jsonl ({'_id', 'answers': [str]}), for r@2kt / r@5kt")
    ap.add_argument("--corpus", help="corpus.jsonl ({'_id', 'title', 'text'}), for r@2kt / r@5kt")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    try:
        metrics = [m for m in args.metrics.split(",") if m]
        for m in metrics:
            parse_metric(m)
        qrels, run = read_qrels(args.qrels), read_run(args.run)
        is_str = lambda x: isinstance(x, str)                                    # noqa: E731
        lang = read_jsonl(args.queries, "lang", is_str, "a string") if args.queries else None
        answers = passages = None
        if args.answers or args.corpus:
            if not (args.answers and args.corpus):
                raise EvalError("--answers and --corpus go together")
            answers = read_jsonl(args.answers, "answers", lambda a: isinstance(a, list) and all(map(is_str, a)),
                                 "a list of strings")
            titles = read_jsonl(args.corpus, "title", is_str, "a string")
            texts = read_jsonl(args.corpus, "text", is_str, "a string")
            passages = {d: f"{titles.get(d, '')} {t}".strip() for d, t in texts.items()}
        result = evaluate(qrels, run, metrics, lang, answers, passages)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1) if args.json else format_table(result, metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
