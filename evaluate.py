"""Retrieval metrics with trec_eval semantics (METHOD.md, Metrics), strict qrels and run readers, the run writer,
and their CLI.

    qrels = read_qrels("data/tiny/qrels/test.tsv")      # {qid: {docid: relevance}}, BEIR tsv or TREC qrels
    run = read_run("out/runs/de.trec")                  # {qid: {docid: score}}, a TREC run
    write_trec("run.trec", qids, pids, scores, ids, tag="de")   # [Q, k] scores and passage rows, e.g. exact_topk's
    result = evaluate(qrels, run, ["recall@100", "ndcg@10"], lang={"q1": "sw", ...})
    print(format_table(result, ["recall@100", "ndcg@10"]))  # rows: all + each language

    python evaluate.py --qrels data/tiny/qrels/test.tsv --run run.trec --queries data/tiny/queries.jsonl \\
        --metrics recall@10,recall@100,mrr@10,ndcg@10,map,success@5,r@2kt \\
        --answers data/tiny/answers.jsonl --corpus data/tiny/corpus.jsonl [--json]

    cmp = compare(qrels, run_a, run_b, ["mrr@10"], lang)  # paired: per-query differences B - A, a 95% interval, p
    python evaluate.py --qrels data/tiny/qrels/test.tsv --compare a.trec b.trec --metrics mrr@10,recall@100 \\
        --queries data/tiny/queries.jsonl [--n-boot 10000 --seed 0] [--json]

Conventions (those of trec_eval, so the numbers equal pytrec_eval's):
- A query's ranking is its run entries sorted by score descending, then document id descending (string order);
  the rank column of the run is ignored. Relevant means relevance > 0; documents missing from the qrels are not.
- Queries of the qrels with no relevant document are skipped. Queries of the qrels absent from the run count as 0
  on every metric (trec_eval -c). Queries of the run absent from the qrels are ignored.
- Every metric is a mean over the evaluated queries: overall ("all") and per language.
- Two runs are compared on the same evaluated queries (those of the qrels), so a query that one run lacks counts
  as 0 for that run, exactly as evaluate() counts it; `compare` says how many such queries each run has.

Metrics, for one query with ranking d_1, d_2, ..., relevance rel(d), R = {d : rel(d) > 0}:
    recall@k     |R in top k| / |R|                          (trec_eval recall_k)
    precision@k  |R in top k| / k                            (P_k)
    success@k    1 if some d in R is in the top k, else 0    (success_k)
    mrr@k        1 / rank of the first d in R if <= k, else 0  (recip_rank of the run cut at k)
    ndcg@k       sum_{i<=k} g(d_i) / log2(i + 1), divided by the same sum over the ideal ordering of the qrels,
                 gain g = the relevance grade (0 if not > 0)  (ndcg_cut_k)
    map, map@k   sum over ranks i (<= k) with d_i in R of precision@i, divided by |R|  (map, map_cut_k)
    r@2kt, r@5kt answer recall at 2,000 / 5,000 tokens, exactly as XOR-TyDi's official evaluation computes it
                 (evals/eval_xor_retrieve.py in the AkariAsai/XORQA repository; MKQA is scored the same way): each
                 passage text of the ranking (the text alone, without its title, as the official predictions hold
                 it) is split by NLTK's word_tokenize (wordtok.py); the tokens are taken in rank order and cut at the
                 budget (the last passage truncated) and joined by single spaces; 1 if some gold answer other than
                 "yes" and "no" is a substring of that string (case-sensitive, the answer as given: no normalisation
                 of case, punctuation, articles or spaces; a match may span two passages), else 0. A query with no
                 answer but "yes"/"no" is skipped by the official script and counts 0 here (the importers of
                 benchmarks.py leave such queries out). The official script's "final" score is the macro average of
                 the per-language scores; "all" here is the mean over queries.
"""
import argparse
import json
import math
import os
import re
import sys

import numpy as np

import wordtok


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


def write_trec(path, qids, pids, scores, ids, tag):
    """Write a TREC run: one line `qid Q0 docid rank score tag` per result, rank from 1 in row order.

    qids: Q query ids; pids: passage row -> id; scores, ids [Q, k] (lists, arrays or CPU tensors, e.g. from
    search.exact_topk). Entries with id < 0 (padding, such as BM25 zeros masked by the caller) are skipped. Scores
    are taken as float32 and written with 9 significant digits, which give that float32 back. Written to
    path + '.tmp', then os.replace: never half-written.
    """
    scores, ids = np.asarray(scores, dtype=np.float32).tolist(), np.asarray(ids).tolist()
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


def lone_surrogate(value):
    """The first string in value (a string, or lists / dicts of them) that is not valid Unicode -> (its index,
    the character), else None. JSON's \\ud800 escape decodes to such a lone surrogate, which no UTF-8 writer or
    tokenizer accepts."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return e.start, value[e.start]
    elif isinstance(value, (list, dict)):
        return next(filter(None, map(lone_surrogate, value.values() if isinstance(value, dict) else value)), None)
    return None


def read_jsonl(path, field, check, what):
    """-> {_id: row[field]} of a JSON-lines file (rows without `field` left out); every row needs a string `_id`,
    and check(row[field]) must hold where the field is present, else `path:line: field must be <what>`. The `_id`
    and the field must be valid Unicode (no lone surrogate)."""
    out = {}
    for i, line in _lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{path}:{i}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("_id"), str):
            raise EvalError(f"{path}:{i}: expected a JSON object with a string '_id'")
        for key in ("_id", field) if "\\u" in line else ():  # a valid UTF-8 line has surrogates only as escapes
            bad = lone_surrogate(row.get(key))
            if bad:
                raise EvalError(f"{path}:{i}: field {key!r} is not valid Unicode "
                                f"(a lone surrogate {bad[1]!r} at character {bad[0]})")
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
    """1.0 if a gold answer occurs in the first `tokens` NLTK tokens of the ranked passages ({docid: text without
    title}), else 0.0: the official XOR-Retrieve rule (see the module docstring)."""
    taken = []
    for d in ranked:
        if len(taken) >= tokens:
            break
        if d not in passages:
            raise EvalError(f"no passage text for document {d!r} (needed by r@{tokens // 1000}kt)")
        taken += wordtok.word_tokenize(passages[d])
    text = " ".join(taken[:tokens])
    return float(any(a in text for a in answers if a not in ("yes", "no")))


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


def metric_list(metrics):
    """Metric names, a list or the comma-separated string of --metrics -> the list, each name known. No name, an
    empty name ('mrr@10,,map') or a name given twice is an EvalError naming --metrics."""
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    text = ",".join(map(str, names))
    if not any(names):
        raise EvalError(f"--metrics {text!r}: no metric given (expected names such as mrr@10,recall@100)")
    for k, name in enumerate(names, 1):
        if not name:
            raise EvalError(f"--metrics {text!r}: empty name at position {k}")
        if name in names[:k - 1]:
            raise EvalError(f"--metrics {text!r}: {name!r} given twice")
        parse_metric(name)
    return names


# ----------------------------------------------------------------------------- evaluation
def per_query(qrels, run, metrics, lang=None, answers=None, passages=None):
    """Each metric on each evaluated query (the queries of qrels with a relevant document; absent from the run: 0).

    Arguments as for evaluate(). -> (qids: sorted list, {metric: [value on qids[i] for each i]})
    """
    metrics = metric_list(metrics)
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
    values = {name: [] for name in metrics}
    for q in qids:
        ranked = ranking(run.get(q, {}))
        for name, (kind, k) in parsed.items():
            values[name].append(answer_recall(ranked, answers.get(q, []), passages, k) if kind == "kt"
                                else CUT[kind](ranked, qrels[q], k))
    return qids, values


def lang_groups(qids, lang):
    """{language: positions in qids of its queries}, languages sorted; {} without lang."""
    langs = sorted({lang[q] for q in qids}) if lang is not None else []
    return {l: [i for i, q in enumerate(qids) if lang[q] == l] for l in langs}


def evaluate(qrels, run, metrics, lang=None, answers=None, passages=None):
    """Mean of each metric over the queries of qrels with a relevant document, overall and per language.

    qrels {qid: {docid: rel}}, run {qid: {docid: score}}, metrics: names (or one comma-separated string);
    lang {qid: language} or None; answers {qid: [str]} and passages {docid: text} for r@Nkt.
    -> {"all": {metric: value}, "per_lang": {lang: {metric: value}} ({} without lang), "n_queries": n}
    """
    qids, values = per_query(qrels, run, metrics, lang, answers, passages)

    def mean(rows):
        return {name: sum(v[i] for i in rows) / len(rows) for name, v in values.items()}

    return {"all": mean(range(len(qids))), "per_lang": {l: mean(rows) for l, rows in lang_groups(qids, lang).items()},
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


# ----------------------------------------------------------------------------- paired comparison
def blocks(rows, width, cells=1 << 20):
    """(start, stop) ranges covering range(rows), each at most `cells` / width rows: bounded memory at any Q."""
    step = max(1, cells // max(width, 1))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def paired_test(d, n_boot=10000, seed=0):
    """Per-query differences d (Q,) -> (lo, hi, p): a 95% interval for their mean and a two-sided p-value.

    Interval: the paired bootstrap percentile interval. Resample b draws Q query positions with replacement, row b
    of rng.integers(0, Q, (n_boot, Q)) with rng = numpy.random.default_rng(seed) (drawn in blocks of rows, which
    gives the same numbers); lo and hi are the 2.5th and 97.5th percentiles (numpy's linear interpolation) of the
    n_boot resampled means.
    p: the paired randomization (sign-flip) test of "on each query, A's and B's values are exchangeable" (Fisher's
    randomization test, recommended for IR by Smucker, Allan and Carterette, CIKM 2007). Under it each d_i is as
    likely as -d_i, so p is the share of the 2^m sign assignments to the m non-zero d_i whose |sum| is at least
    the observed |sum|: computed exactly when 2^m <= n_boot, else estimated from n_boot random assignments (drawn
    from the same rng after the resamples) as (1 + hits) / (1 + n_boot), which is never 0.
    Why not the bootstrap's own p-value: with few queries it is far too small (one query with d != 0 would get
    p = 0, since every resample has the same mean), while the randomization test is exact at any Q: identical
    runs give p = 1; a single query gives p = 1 (its two assignments are equally extreme) and an interval
    collapsed to [d_1, d_1]; m non-zero differences can never give p below 2^(1 - m) (below 6 of them, never
    under 0.05), which is the honest answer for a small language.
    """
    d = np.asarray(d, dtype=np.float64)                                        # (Q,)
    n = len(d)
    if n == 0:
        raise EvalError("paired_test needs at least one query")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise EvalError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise EvalError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)                                                   # (n_boot,)
    for r0, r1 in blocks(n_boot, n):
        means[r0:r1] = d[rng.integers(0, n, (r1 - r0, n))].mean(1)             # (rows, Q) -> (rows,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    nz = d[d != 0]                                                             # (m,) a zero difference flips to itself
    m = len(nz)
    observed = abs(nz.sum()) - 1e-9 * np.abs(nz).sum()                        # tolerance: sums in another order
    if m == 0:
        p = 1.0
    elif 2 ** m <= n_boot:                                                     # every assignment: row r's bits
        hits = 0
        for r0, r1 in blocks(2 ** m, m):
            signs = 1 - 2 * ((np.arange(r0, r1)[:, None] >> np.arange(m)) & 1)  # (rows, m) of +-1
            hits += int((np.abs(signs @ nz) >= observed).sum())
        p = hits / 2 ** m
    else:
        hits = 0
        for r0, r1 in blocks(n_boot, m):
            signs = 1 - 2 * rng.integers(0, 2, (r1 - r0, m))                   # (rows, m) of +-1
            hits += int((np.abs(signs @ nz) >= observed).sum())
        p = (1 + hits) / (1 + n_boot)
    return float(lo), float(hi), float(p)


def compare(qrels, run_a, run_b, metrics, lang=None, answers=None, passages=None, n_boot=10000, seed=0):
    """Paired comparison of run B with run A on the evaluated queries of qrels, overall and per language.

    Arguments as for evaluate(), plus paired_test's n_boot and seed (each metric and group starts from the seed,
    so a row does not depend on which other metrics or languages were asked for). For a metric and a group of n
    queries with values a_i, b_i: mean_a and mean_b (evaluate()'s numbers), diff = mean_b - mean_a (B - A), ci: the
    95% interval of the mean of d_i = b_i - a_i, p: paired_test's two-sided p-value.
    -> {"diff": "B - A", "n_boot", "seed", "n_queries", "missing": {"a": k, "b": k} (evaluated queries a run has
        no result for: they count 0), "all": {metric: {"n", "mean_a", "mean_b", "diff", "ci": [lo, hi], "p"}},
        "per_lang": {lang: {metric: {...}}}}
    """
    qids, values_a = per_query(qrels, run_a, metrics, lang, answers, passages)
    _, values_b = per_query(qrels, run_b, metrics, lang, answers, passages)

    def row(name, rows):
        a, b = [values_a[name][i] for i in rows], [values_b[name][i] for i in rows]
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        lo, hi, p = paired_test([y - x for x, y in zip(a, b)], n_boot, seed)
        return {"n": len(rows), "mean_a": mean_a, "mean_b": mean_b, "diff": mean_b - mean_a, "ci": [lo, hi], "p": p}

    def table(rows):
        return {name: row(name, rows) for name in values_a}

    return {"diff": "B - A", "n_boot": n_boot, "seed": seed, "n_queries": len(qids),
            "missing": {"a": sum(q not in run_a for q in qids), "b": sum(q not in run_b for q in qids)},
            "all": table(range(len(qids))), "per_lang": {l: table(rows) for l, rows in lang_groups(qids, lang).items()}}


def format_comparison(result, metrics, name_a="A", name_b="B"):
    """compare()'s result as text: a header saying what A, B, diff, the interval and p are, then one row per metric
    and group (all, then each language), then a note for each run that lacks some evaluated queries."""
    head = (f"A = {name_a}, B = {name_b}; diff = mean B - mean A on the same queries; 95% CI: paired bootstrap "
            f"percentile ({result['n_boot']} resamples, seed {result['seed']}); p: two-sided paired randomization test")
    rows = [("metric", "group", "n", "mean A", "mean B", "diff", "95% CI", "p")]
    for m in metrics:
        for group, r in [("all", result["all"][m])] + [(l, v[m]) for l, v in result["per_lang"].items()]:
            rows.append((m, group, str(r["n"]), f"{r['mean_a']:.4f}", f"{r['mean_b']:.4f}", f"{r['diff']:+.4f}",
                         f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]", f"{r['p']:.4f}"))
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    lines = [head] + ["  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
                      for r in rows]
    for key, name in (("a", name_a), ("b", name_b)):
        if result["missing"][key]:
            lines.append(f"note: {name} has no results for {result['missing'][key]} of the {result['n_queries']} "
                         f"evaluated queries; they count as 0")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qrels", required=True, help="BEIR qrels tsv or TREC qrels")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="TREC run: a table of means")
    which.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                       help="two TREC runs: paired differences B - A per metric, a 95%% interval and a p-value")
    ap.add_argument("--metrics", default="recall@10,recall@100,mrr@10,ndcg@10,map,success@5",
                    help="comma-separated metric names")
    ap.add_argument("--queries", help="BEIR queries.jsonl with 'lang': adds one row per language")
    ap.add_argument("--answers", help="answers.jsonl ({'_id', 'answers': [str]}), for r@2kt / r@5kt")
    ap.add_argument("--corpus", help="corpus.jsonl ({'_id', 'title', 'text'}; the text is searched), for r@2kt / r@5kt")
    ap.add_argument("--n-boot", type=int, default=10000, help="--compare: bootstrap resamples (and random sign "
                    "assignments when the exact randomization test would need more)")
    ap.add_argument("--seed", type=int, default=0, help="--compare: seed of the resamples")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    try:
        metrics = metric_list(args.metrics)
        if args.n_boot < 1:
            raise EvalError(f"--n-boot must be at least 1, got {args.n_boot}")
        if args.seed < 0:
            raise EvalError(f"--seed must be non-negative, got {args.seed}")
        qrels = read_qrels(args.qrels)
        runs = [read_run(path) for path in (args.compare or [args.run])]
        is_str = lambda x: isinstance(x, str)                                    # noqa: E731
        lang = read_jsonl(args.queries, "lang", is_str, "a string") if args.queries else None
        answers = passages = None
        if args.answers or args.corpus:
            if not (args.answers and args.corpus):
                raise EvalError("--answers and --corpus go together")
            answers = read_jsonl(args.answers, "answers", lambda a: isinstance(a, list) and all(map(is_str, a)),
                                 "a list of strings")
            passages = read_jsonl(args.corpus, "text", is_str, "a string")  # the text alone, as XOR-TyDi's script
        if args.compare:
            result = compare(qrels, *runs, metrics, lang, answers, passages, args.n_boot, args.seed)
            text = format_comparison(result, metrics, *args.compare)
        else:
            result = evaluate(qrels, runs[0], metrics, lang, answers, passages)
            text = format_table(result, metrics)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
