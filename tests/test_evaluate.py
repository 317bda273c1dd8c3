"""evaluate.py: every metric against values worked out by hand (trec_eval's tie order, graded relevance, a query
missing from the run, one with no relevant document), answer recall with truncation, strict readers, the CLI."""
import json
import math
import os
import subprocess
import sys

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
        "pB": " ".join(["x"] * 499 + ["GOLDEN", "gate"] + ["y"] * 99),  # 'GOLDEN' is token 2,000, 'gate' 2,001
        "pC": " ".join(["x"] * 498 + ["Golden", "Gate"]),                # both within the budget
    }
    qrels = {"q1": {"pA": 1}, "q2": {"pA": 1}, "q3": {"pA": 1}}
    run = {"q1": {"pA": 2.0, "pB": 1.0}, "q2": {"pA": 2.0, "pC": 1.0}, "q3": {"pA": 2.0, "pC": 1.0}}
    answers = {"q1": ["golden  gate"], "q2": ["nothing", "golden gate"]}  # q3: no answer string -> 0
    got = E.evaluate(qrels, run, ["r@2kt", "r@5kt"], answers=answers, passages=passages)
    assert E.evaluate({"q1": qrels["q1"]}, run, ["r@2kt", "r@5kt"], answers=answers, passages=passages)["all"] == \
        {"r@2kt": 0.0, "r@5kt": 1.0}
    assert got["all"] == {"r@2kt": pytest.approx(1 / 3), "r@5kt": pytest.approx(2 / 3)}
    with pytest.raises(E.EvalError, match="need answers"):
        E.evaluate(qrels, run, ["r@2kt"])
    with pytest.raises(E.EvalError, match="no passage text for document 'pB'"):
        E.evaluate(qrels, run, ["r@5kt"], answers=answers, passages={"pA": "w"})


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
