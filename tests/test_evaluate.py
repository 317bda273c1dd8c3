"""evaluate.py: every metric against values worked out by hand (trec_eval's tie order, graded relevance, a query
missing from the run, one with no relevant document), answer recall with truncation, strict readers, the run
writer, the CLI."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import evaluate as E

QRELS = {
    "q1": {"d1": 1, "d2": 2, "d3": 0, "d4": 1},  # relevant: d1, d2 (grade 2), d4; d3 judged not relevant
    "q2": {"d5": 1},
    "q3": {"d6": 0},                              # no relevant document: skipped
    "q4": {"d7": 1},                              # absent from the run: 0 everywhere
}
RUN = {
    # ties at 2.0 go by docid descending: d9, d2, d1 -> ranking d3 d9 d2 d1 d4 d8, relevance 0 0 2 1 1 0
    "q1": {"d3": 3.0, "d1": 2.0, "d2": 2.0, "d9": 2.0, "d4": 1.0, "d8": 0.5},
    # tie: d6 before d5 -> the relevant d5 is at rank 2 (rank 1 with the opposite tie rule)
    "q2": {"d5": 1.0, "d6": 1.0},
    "q3": {"d6": 1.0},
    "q5": {"d1": 1.0},                            # not in the qrels: ignored
}
L3, L4, L5, L6 = math.log2(3), math.log2(4), math.log2(5), math.log2(6)
IDCG_Q1_3 = 2 + 1 / L3 + 1 / L4                   # ideal gains 2, 1, 1
# Hand-worked per query (q1, q2, q4):
EXPECTED = {
    "recall@1": (0, 0, 0),
    "recall@3": (1 / 3, 1, 0),                     # q1: d2 only among 3 relevant
    "recall@5": (1, 1, 0),                         # q1: d2, d1, d4
    "precision@3": (1 / 3, 1 / 3, 0),
    "precision@5": (3 / 5, 1 / 5, 0),
    "success@1": (0, 0, 0),
    "success@3": (1, 1, 0),
    "mrr@2": (0, 1 / 2, 0),                        # q1's first relevant is at rank 3
    "mrr@3": (1 / 3, 1 / 2, 0),
    "ndcg@3": ((2 / L4) / IDCG_Q1_3, (1 / L3) / 1, 0),               # q1: d2 (gain 2) at rank 3
    "ndcg@5": ((2 / L4 + 1 / L5 + 1 / L6) / IDCG_Q1_3, 1 / L3, 0),  # q1: gains 2, 1, 1 at ranks 3, 4, 5
    "map": ((1 / 3 + 2 / 4 + 3 / 5) / 3, 1 / 2, 0),                  # precision at ranks 3, 4, 5 over |R| = 3
    "map@4": ((1 / 3 + 2 / 4) / 3, 1 / 2, 0),                        # only ranks <= 4, still over |R| = 3
}
METRICS = list(EXPECTED)


def test_ranking_ties_by_docid_descending():
    assert E.ranking(RUN["q1"]) == ["d3", "d9", "d2", "d1", "d4", "d8"]
    assert E.ranking({"b": 1.0, "a": 1.0, "c": 1.0, "z": 0.5}) == ["c", "b", "a", "z"]


@pytest.mark.parametrize("qid,col", [("q1", 0), ("q2", 1), ("q4", 2)])
def test_each_metric_by_hand_per_query(qid, col):
    got = E.evaluate({qid: QRELS[qid]}, RUN, METRICS)
    assert got["n_queries"] == 1
    for m in METRICS:
        assert got["all"][m] == pytest.approx(EXPECTED[m][col], abs=1e-12), m


def test_means_skip_no_relevant_and_count_missing_as_zero():
    got = E.evaluate(QRELS, RUN, METRICS)
    assert got["n_queries"] == 3 and got["per_lang"] == {}  # q1, q2, q4; not q3 (no relevant), not q5
    for m in METRICS:
        assert got["all"][m] == pytest.approx(sum(EXPECTED[m]) / 3, abs=1e-12), m
    assert got["all"]["recall@3"] == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_per_language():
    lang = {"q1": "en", "q2": "sw", "q3": "en", "q4": "sw"}
    got = E.evaluate(QRELS, RUN, "mrr@3,map", lang=lang)  # a comma-separated string works too
    assert list(got["per_lang"]) == ["en", "sw"]
    assert got["per_lang"]["en"]["mrr@3"] == pytest.approx(1 / 3)
    assert got["per_lang"]["sw"]["mrr@3"] == pytest.approx((1 / 2 + 0) / 2)
    table = E.format_table(got, ["mrr@3", "map"]).splitlines()
    assert [line.split()[0] for line in table[1:]] == ["all", "en", "sw"] and "mrr@3" in table[0]
    with pytest.raises(E.EvalError, match="no language"):
        E.evaluate(QRELS, RUN, ["map"], lang={"q1": "en"})


def test_ndcg_graded_order_matters():
    qrels = {"q": {"a": 3, "b": 1}}
    best, worst = E.evaluate(qrels, {"q": {"a": 2, "b": 1}}, ["ndcg@2"]), E.evaluate(qrels, {"q": {"a": 1, "b": 2}},
                                                                                        ["ndcg@2"])
    assert best["all"]["ndcg@2"] == pytest.approx(1.0)
    assert worst["all"]["ndcg@2"] == pytest.approx((1 + 3 / L3) / (3 + 1 / L3))  # gains 1, 3 against 3, 1


def test_answer_recall_truncates_the_last_passage():
    """Budget 2,000 tokens: pA gives 1,500, so pB contributes its first 500 (indices 0..499)."""
    passages = {
        "pA": " ".join(["w"] * 1500),
        "pB": " ".join(["x"] * 499 + ["Golden", "Gate"] + ["y"] * 99),  # 'Golden' is token 2,000, 'Gate' 2,001
        "pC": " ".join(["x"] * 498 + ["Golden", "Gate", "yes"]),        # both within the budget
    }
    qrels = {q: {"pA": 1} for q in ("q1", "q2", "q3", "q4", "q5")}
    run = {"q1": {"pA": 2.0, "pB": 1.0}, **{q: {"pA": 2.0, "pC": 1.0} for q in ("q2", "q3", "q4", "q5")}}
    answers = {"q1": ["Golden Gate"], "q2": ["nothing", "Golden Gate"],  # q3: no answer string -> 0
               "q4": ["golden gate", "Golden  Gate"], "q5": ["yes", "no"]}  # as given, case and spaces: 0; yes/no: 0
    got = E.evaluate(qrels, run, ["r@2kt", "r@5kt"], answers=answers, passages=passages)
    assert E.evaluate({"q1": qrels["q1"]}, run, ["r@2kt", "r@5kt"], answers=answers, passages=passages)["all"] == \
        {"r@2kt": 0.0, "r@5kt": 1.0}
    assert got["all"] == {"r@2kt": pytest.approx(1 / 5), "r@5kt": pytest.approx(2 / 5)}
    with pytest.raises(E.EvalError, match="need answers"):
        E.evaluate(qrels, run, ["r@2kt"])
    with pytest.raises(E.EvalError, match="no passage text for document 'pB'"):
        E.evaluate(qrels, run, ["r@5kt"], answers=answers, passages={"pA": "w"})


def test_answer_recall_official_tokens_by_hand():
    """XOR-TyDi's rule on NLTK tokens, worked by hand (wordtok.word_tokenize; checked against NLTK 3.5):
    p1 -> He moved to Paris , France .                                    (7 tokens)
    p2 -> She said `` hi '' to Mr. Smith . Then left .                     (12: 'Mr.' is an abbreviation)
    p3 -> 東京都は日本の首都である。                                          (1: no spaces, no split)"""
    P = {"p1": "He moved to Paris, France.", "p2": 'She said "hi" to Mr. Smith. Then left.',
         "p3": "東京都は日本の首都である。"}
    r = lambda answers, budget, ranked=("p1", "p2"): E.answer_recall(list(ranked), answers, P, budget)  # noqa: E731
    assert r(["Paris, France"], 7) == 0.0 and r(["Paris , France"], 7) == 1.0  # the comma is a token of its own
    assert r(["Paris , France"], 5) == 0.0 and r(["Paris ,"], 5) == 1.0        # cut after ','
    assert r(["France . She"], 7) == 0.0 and r(["France . She"], 8) == 1.0    # a match across two passages
    assert r(["Mr. Smith"], 19) == 1.0 and r(["Mr . Smith"], 19) == 0.0 and r(["Smith ."], 19) == 1.0
    assert r(['"hi"'], 19) == 0.0 and r(["`` hi ''"], 19) == 1.0               # quotes become `` and ''
    assert r(["paris"], 19) == 0.0 and r(["the Beatles"], 19) == 0.0          # no case or article normalisation
    assert r(["東京"], 1, ["p3"]) == 1.0 and r(["日本の首都"], 1, ["p3"]) == 1.0  # a substring of one CJK token
    assert r(["東京 都"], 1, ["p3"]) == 0.0 and r(["首都である。 He"], 2, ["p3", "p1"]) == 1.0
    assert r(["He"], 1, ["p3", "p1"]) == 0.0                                  # p3 is the whole budget of 1


@pytest.mark.parametrize("name", ["recall", "ndcg@0", "r@kt", "mrr@x", "NDCG@10", "foo@3"])
def test_unknown_metric(name):
    with pytest.raises(E.EvalError, match="unknown metric"):
        E.evaluate(QRELS, RUN, [name])


def test_no_query_with_a_relevant_document():
    with pytest.raises(E.EvalError, match="no query"):
        E.evaluate({"q": {"d": 0}}, RUN, ["map"])


# ---------------------------------------------------------------- readers
def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_read_qrels_both_formats(tmp_path):
    beir = write(tmp_path, "q.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n\nq1\td2\t0\nq2\td1\t2\n")
    trec = write(tmp_path, "q.txt", "q1 0 d1 1\nq1 0 d2 0\nq2\t0\td1   2\n")
    assert E.read_qrels(beir) == E.read_qrels(trec) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": 2}}


@pytest.mark.parametrize("text,message", [
    ("query-id\tcorpus-id\nq1\td1\t1\n", ":1: expected the BEIR header"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n", ":3: expected 3 tab-separated fields, got 2"),
    ("query-id\tcorpus-id\tscore\nq1\td1\tyes\n", ":2: relevance 'yes' is not an integer"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t0\n", ":3: duplicate judgement"),
    ("q1 0 d1 1\nq1 0 d2\n", ":2: expected 4 whitespace-separated fields, got 3"),
    ("query-id\tcorpus-id\tscore\n", ":1: no judgements"),
])
def test_read_qrels_errors(tmp_path, text, message):
    path = write(tmp_path, "qrels.tsv", text)
    with pytest.raises(E.EvalError) as e:
        E.read_qrels(path)
    assert str(e.value).startswith(path) and message in str(e.value)


@pytest.mark.parametrize("text,message", [
    ("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0\n", ":2: expected 6 fields"),
    ("q1 Q0 d1 1 high t\n", ":1: score 'high' is not a number"),
    ("q1 Q0 d1 1 2.0 t\nq1 Q0 d1 2 1.0 t\n", ":2: document 'd1' appears twice for query 'q1'"),
    ("q1 Q0 d1 1 nan t\n", ":1: score 'nan' is not finite"),
    ("q1 Q0 d1 first 2.0 t\n", ":1: rank 'first' is not an integer"),
])
def test_read_run_errors(tmp_path, text, message):
    path = write(tmp_path, "run.trec", text)
    with pytest.raises(E.EvalError) as e:
        E.read_run(path)
    assert str(e.value).startswith(path) and message in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(E.EvalError, match=":0: file not found"):
        E.read_run(str(tmp_path / "nope.trec"))


# ---------------------------------------------------------------- CLI
def cli(*args):
    script = os.path.join(os.path.dirname(__file__), os.pardir, "evaluate.py")
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True)


def test_cli_json_and_table(tmp_path):
    qrels = write(tmp_path, "qrels.tsv", "query-id\tcorpus-id\tscore\n" +
                  "".join(f"{q}\t{d}\t{r}\n" for q, ds in QRELS.items() for d, r in ds.items()))
    run = write(tmp_path, "run.trec", "".join(f"{q} Q0 {d} 0 {s} t\n" for q, ds in RUN.items() for d, s in ds.items()))
    queries = write(tmp_path, "queries.jsonl", "".join(json.dumps({"_id": q, "text": "x", "lang": lg}) + "\n"
                                                       for q, lg in [("q1", "en"), ("q2", "sw"), ("q3", "en"),
                                                                     ("q4", "sw")]))
    r = cli("--qrels", qrels, "--run", run, "--metrics", "map,ndcg@3", "--queries", queries, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["n_queries"] == 3 and list(got["per_lang"]) == ["en", "sw"]
    assert got["all"]["map"] == pytest.approx(sum(EXPECTED["map"]) / 3)
    r = cli("--qrels", qrels, "--run", run, "--metrics", "map,ndcg@3")
    assert r.returncode == 0 and r.stdout.split()[:3] == ["map", "ndcg@3", "all"]


def test_write_trec_round_trip(tmp_path):
    path = tmp_path / "run.trec"
    scores = np.array([[2.5, 1.0, 1.0], [0.123456789, -3.0, 0.0]], dtype=np.float32)
    ids = np.array([[2, 0, 1], [1, 2, -1]])  # -1: a padded entry, skipped
    E.write_trec(path, ["qa", "qb"], ["p0", "p1", "p2"], scores, ids, tag="t")
    lines = path.read_text().splitlines()
    assert lines[0] == "qa Q0 p2 1 2.5 t" and len(lines) == 5 and lines[-1].startswith("qb Q0 p2 2 -3 ")
    run = E.read_run(path)
    assert run["qa"] == {"p2": 2.5, "p0": 1.0, "p1": 1.0} and run["qb"].keys() == {"p1", "p2"}
    assert np.float32(run["qb"]["p1"]) == scores[1, 0]  # 9 digits give back the float32 exactly
    assert os.listdir(tmp_path) == ["run.trec"]  # no temp file left
    E.write_trec(path, ["q"], ["p0"], [[0.8]], [[0]], tag="t")  # Python floats are taken as float32 as well
    assert path.read_text() == "q Q0 p0 1 0.800000012 t\n"
    with pytest.raises(ValueError, match="whitespace"):
        E.write_trec(tmp_path / "bad.trec", ["q a", "qb"], ["p0", "p1", "p2"], scores, ids, tag="t")
    assert sorted(os.listdir(tmp_path)) == ["run.trec"]


@pytest.mark.parametrize("run_text,metrics,message", [
    ("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0\n", "map", "run.trec:2: expected 6 fields"),
    ("q1 Q0 d1 1 2.0 t\n", "map,bogus@3", "unknown metric 'bogus@3'"),
    ("q1 Q0 d1 1 2.0 t\n", "r@2kt", "r@Nkt metrics need answers"),
])
def test_cli_errors_are_one_line(tmp_path, run_text, metrics, message):
    qrels = write(tmp_path, "qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    r = cli("--qrels", qrels, "--run", write(tmp_path, "run.trec", run_text), "--metrics", metrics)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: ") and message in r.stderr and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("metrics,message", [
    (",", "--metrics ',': no metric given"),
    ("", "--metrics '': no metric given"),
    ("mrr@10,,recall@100", "--metrics 'mrr@10,,recall@100': empty name at position 2"),
    ("map,", "--metrics 'map,': empty name at position 2"),
    ("map,mrr@3,map", "--metrics 'map,mrr@3,map': 'map' given twice"),
])
def test_cli_rejects_empty_or_repeated_metric_names(tmp_path, metrics, message):
    qrels = write(tmp_path, "qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    r = cli("--qrels", qrels, "--run", write(tmp_path, "run.trec", "q1 Q0 d1 1 2.0 t\n"), "--metrics", metrics)
    assert r.returncode == 1 and r.stdout == "" and r.stderr.startswith(f"error: {message}")
    assert r.stderr.count("\n") == 1
    with pytest.raises(E.EvalError, match="--metrics"):
        E.evaluate(QRELS, RUN, metrics)
    with pytest.raises(E.EvalError, match="no metric given"):
        E.evaluate(QRELS, RUN, [])


def test_readers_reject_lone_surrogates(tmp_path):
    """JSON's \\ud800 escape is valid JSON but not valid Unicode; a surrogate pair escape is a valid character."""
    ok = write(tmp_path, "a.jsonl", '{"_id": "q1", "answers": ["\\ud83d\\ude00 x"]}\n')
    assert E.read_jsonl(ok, "answers", lambda a: True, "a list") == {"q1": ["\U0001F600 x"]}
    for text, message in [
        ('{"_id": "q1", "answers": ["x"]}\n{"_id": "q2", "answers": ["y", "z\\ud800"]}\n',
         ":2: field 'answers' is not valid Unicode (a lone surrogate '\\ud800' at character 1)"),
        ('{"_id": "q\\udc00", "answers": ["x"]}\n', ":1: field '_id' is not valid Unicode (a lone surrogate '\\udc00'"),
    ]:
        path = write(tmp_path, "answers.jsonl", text)
        with pytest.raises(E.EvalError) as e:
            E.read_jsonl(path, "answers", lambda a: True, "a list")
        assert str(e.value).startswith(path + message), str(e.value)
    qrels = write(tmp_path, "qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    corpus = write(tmp_path, "corpus.jsonl", '{"_id": "d1", "title": "t", "text": "a\\udfffb"}\n')
    answers = write(tmp_path, "answers2.jsonl", '{"_id": "q1", "answers": ["a"]}\n')
    r = cli("--qrels", qrels, "--run", write(tmp_path, "run.trec", "q1 Q0 d1 1 2.0 t\n"), "--metrics", "r@2kt",
            "--answers", answers, "--corpus", corpus)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"error: {corpus}:1: field 'text' is not valid Unicode (a lone surrogate '\\udfff' at "
                        f"character 1)\n")


# ---------------------------------------------------------------- paired comparison
# Four queries, one relevant document each; mrr@10 by hand. A: ranks 1, 2, 4, absent; B: ranks 1, 1, 1, 2.
CMP_QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}}
CMP_A = {"q1": {"d1": 3.0, "x": 1.0}, "q2": {"y": 2.0, "d2": 1.0}, "q3": {"a": 4.0, "b": 3.0, "c": 2.0, "d3": 1.0}}
CMP_B = {"q1": {"d1": 1.0}, "q2": {"d2": 1.0}, "q3": {"d3": 1.0}, "q4": {"z": 2.0, "d4": 1.0}}
CMP_LANG = {"q1": "x", "q2": "x", "q3": "y", "q4": "y"}


def test_compare_hand_worked():
    """Per-query mrr@10: A = 1, 1/2, 1/4, 0 (q4 absent counts 0); B = 1, 1, 1, 1/2; d = B - A = 0, 1/2, 3/4, 1/2.

    Randomization p: the non-zero d are 1/2, 3/4, 1/2 (sum 7/4); of their 8 sign assignments only all-plus and
    all-minus reach |sum| >= 7/4, so p = 2/8. Language x: d = 0, 1/2: one non-zero difference, p = 2/2 = 1; its
    resampled means are 0, 1/4, 1/2 with probabilities 1/4, 1/2, 1/4, so the 2.5th and 97.5th percentiles are 0
    and 1/2 exactly. Language y: d = 3/4, 1/2: assignments give |sum| 5/4 (twice) or 1/4 (twice): p = 1/2; the
    means 1/2 and 3/4 each have probability 1/4 > 2.5 %: interval [1/2, 3/4].
    """
    got = E.compare(CMP_QRELS, CMP_A, CMP_B, ["mrr@10"], lang=CMP_LANG)
    assert got["diff"] == "B - A" and got["n_queries"] == 4 and got["missing"] == {"a": 1, "b": 0}
    r = got["all"]["mrr@10"]
    assert (r["n"], r["mean_a"], r["mean_b"], r["diff"], r["p"]) == (4, 1.75 / 4, 3.5 / 4, 1.75 / 4, 0.25)
    assert 0 < r["ci"][0] < 1.75 / 4 < r["ci"][1] < 0.75
    for g in ("a", "b"):  # the means are evaluate()'s
        run = CMP_A if g == "a" else CMP_B
        assert E.evaluate(CMP_QRELS, run, ["mrr@10"], CMP_LANG)["all"]["mrr@10"] == r[f"mean_{g}"]
    x, y = got["per_lang"]["x"]["mrr@10"], got["per_lang"]["y"]["mrr@10"]
    assert (x["n"], x["diff"], x["ci"], x["p"]) == (2, 0.25, [0.0, 0.5], 1.0)
    assert (y["n"], y["diff"], y["ci"], y["p"]) == (2, 0.625, [0.5, 0.75], 0.5)


@pytest.mark.parametrize("d,lo,hi,p", [
    ([1, 1, 1, 1], 1, 1, 2 / 16),            # the smallest p four queries can give
    ([0, 0.5, 0.5, 0], 0, 0.5, 2 / 4),       # all-zero and all-0.5 resamples each have probability 1/16 > 2.5 %
    ([0.25, 0.25, 0.25, -0.25], None, None, 10 / 16),  # |sum| >= 1/2: all one sign (2) or one sign differs (8)
    ([0.3], 0.3, 0.3, 1.0),                  # one query: the interval collapses, no evidence of a difference
    ([0, 0, 0], 0, 0, 1.0),
])
def test_paired_test_hand_worked(d, lo, hi, p):
    got = E.paired_test(d)
    assert got[2] == pytest.approx(p, abs=1e-15)
    if lo is not None:
        assert got[:2] == pytest.approx((lo, hi), abs=1e-15)


def test_compare_identical_runs_and_single_query():
    got = E.compare(QRELS, RUN, RUN, METRICS, lang={"q1": "en", "q2": "sw", "q4": "sw"})
    for r in [got["all"][m] for m in METRICS] + [v[m] for v in got["per_lang"].values() for m in METRICS]:
        assert r["diff"] == 0 and r["ci"] == [0, 0] and r["p"] == 1 and r["mean_a"] == r["mean_b"]
    one = E.compare({"q1": QRELS["q1"]}, RUN, {}, ["recall@5"])["all"]["recall@5"]  # B retrieves nothing: 0
    assert (one["n"], one["diff"], one["ci"], one["p"]) == (1, -1.0, [-1.0, -1.0], 1.0)


def slow_percentile(values, q):
    """numpy's default ('linear') percentile, by hand."""
    s, pos = sorted(values), q / 100 * (len(values) - 1)
    i = math.floor(pos)
    return s[i] + (s[min(i + 1, len(s) - 1)] - s[i]) * (pos - i)


def test_paired_test_equals_slow_references(monkeypatch):
    import itertools
    import numpy as np
    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 10):
        d = np.round(rng.normal(size=n), 1) * (rng.random(n) < 0.8)           # some zero differences
        lo, hi, p = E.paired_test(d, n_boot=3000, seed=3)
        draws = np.random.default_rng(3).integers(0, n, (3000, n))            # the documented resamples
        means = [sum(d[j] for j in row) / n for row in draws]
        assert (lo, hi) == pytest.approx((slow_percentile(means, 2.5), slow_percentile(means, 97.5)), abs=1e-12)
        obs = abs(sum(d))
        sums = [abs(sum(s * x for s, x in zip(signs, d))) for signs in itertools.product((1, -1), repeat=n)]
        assert p == pytest.approx(sum(v >= obs - 1e-9 for v in sums) / 2 ** n, abs=1e-12)
    # blocks of rows give the same numbers as one block, and the random sign assignments (2^12 > n_boot = 1500)
    # estimate the exact p (n_boot = 5000 enumerates the 4,096 assignments)
    d = np.linspace(-0.5, 0.8, 12)
    whole = E.paired_test(d, n_boot=1500, seed=1)
    blocks = E.blocks
    monkeypatch.setattr(E, "blocks", lambda rows, width: blocks(rows, width, cells=7 * width))
    assert E.paired_test(d, n_boot=1500, seed=1) == whole
    exact = E.paired_test(d, n_boot=5000)[2]
    sums = [abs(sum(s * x for s, x in zip(signs, d))) for signs in itertools.product((1, -1), repeat=12)]
    assert exact == pytest.approx(sum(v >= abs(sum(d)) - 1e-9 for v in sums) / 4096, abs=1e-12)
    assert 0.1 < exact < 0.9 and abs(whole[2] - exact) < 0.05                 # sd of the estimate <= 0.013
    # the estimate is never 0: 20 equal differences, none of 1,000 random assignments (almost surely) all one sign
    assert E.paired_test([1.0] * 20, n_boot=1000) == (1.0, 1.0, 1 / 1001)


def test_compare_is_deterministic_per_seed():
    rng = __import__("random").Random(0)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(40)}
    run_a, run_b = ({f"q{i}": {f"d{i}": 1.0, **{f"n{j}": rng.random() * 2 for j in range(5)}} for i in range(40)}
                    for _ in range(2))
    args = (qrels, run_a, run_b, ["mrr@10", "recall@3"])
    assert E.compare(*args, seed=7) == E.compare(*args, seed=7)
    assert E.compare(*args, seed=7)["all"]["mrr@10"]["ci"] != E.compare(*args, seed=8)["all"]["mrr@10"]["ci"]
    # a row does not depend on the other metrics asked for
    assert E.compare(*args[:3], ["mrr@10"], seed=7)["all"]["mrr@10"] == E.compare(*args, seed=7)["all"]["mrr@10"]
    with pytest.raises(E.EvalError, match="n_boot must be a positive integer"):
        E.compare(*args, n_boot=0)
    with pytest.raises(E.EvalError, match="seed must be a non-negative integer"):
        E.compare(*args, seed=-1)


def write_cmp(tmp_path):
    qrels = write(tmp_path, "qrels.tsv", "query-id\tcorpus-id\tscore\n" +
                  "".join(f"{q}\t{d}\t{r}\n" for q, ds in CMP_QRELS.items() for d, r in ds.items()))
    trec = lambda run: "".join(f"{q} Q0 {d} 0 {s} t\n" for q, ds in run.items() for d, s in ds.items())  # noqa: E731
    runs = [write(tmp_path, "a.trec", trec(CMP_A)), write(tmp_path, "b.trec", trec(CMP_B))]
    queries = write(tmp_path, "queries.jsonl", "".join(json.dumps({"_id": q, "text": "t", "lang": lg}) + "\n"
                                                       for q, lg in CMP_LANG.items()))
    return qrels, runs, queries


def test_cli_compare(tmp_path):
    qrels, (a, b), queries = write_cmp(tmp_path)
    r = cli("--qrels", qrels, "--compare", a, b, "--metrics", "mrr@10,success@1", "--queries", queries, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == E.compare(CMP_QRELS, CMP_A, CMP_B, ["mrr@10", "success@1"], CMP_LANG)
    r = cli("--qrels", qrels, "--compare", a, b, "--metrics", "mrr@10", "--queries", queries)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"A = {a}, B = {b}; diff = mean B - mean A") and "10000 resamples, seed 0" in lines[0]
    assert lines[1].split() == ["metric", "group", "n", "mean", "A", "mean", "B", "diff", "95%", "CI", "p"]
    assert lines[2].split() == ["mrr@10", "all", "4", "0.4375", "0.8750", "+0.4375"] + lines[2].split()[6:]
    assert lines[2].split()[-1] == "0.2500"
    assert lines[3].split() == ["mrr@10", "x", "2", "0.7500", "1.0000", "+0.2500", "[+0.0000,", "+0.5000]", "1.0000"]
    assert lines[4].split() == ["mrr@10", "y", "2", "0.1250", "0.7500", "+0.6250", "[+0.5000,", "+0.7500]", "0.5000"]
    assert lines[5] == f"note: {a} has no results for 1 of the 4 evaluated queries; they count as 0"
    assert len(lines) == 6


@pytest.mark.parametrize("extra,message", [
    (["--compare", "A", "nope.trec"], "nope.trec:0: file not found"),
    (["--compare", "A", "B", "--metrics", "mrr@10,,map"], "--metrics 'mrr@10,,map': empty name at position 2"),
    (["--compare", "A", "B", "--n-boot", "0"], "--n-boot must be at least 1, got 0"),
    (["--compare", "A", "B", "--seed", "-2"], "--seed must be non-negative, got -2"),
    (["--compare", "A", "B", "--queries", "Q"], "query 'q4' has no language (1 such queries)"),
])
def test_cli_compare_errors(tmp_path, extra, message):
    qrels, (a, b), _ = write_cmp(tmp_path)
    queries = write(tmp_path, "q.jsonl", "".join('{"_id": "%s", "lang": "x"}\n' % q for q in ("q1", "q2", "q3")))
    names = {"A": a, "B": b, "Q": queries, "nope.trec": str(tmp_path / "nope.trec")}
    r = cli("--qrels", qrels, *[names.get(x, x) for x in extra])
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: ") and message in r.stderr and "Traceback" not in r.stderr
    r = cli("--qrels", qrels, "--run", a, "--compare", a, b)                      # one of the two, not both
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
