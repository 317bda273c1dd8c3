"""The QG's written distillation queries (written.py, --kd-written) and the dev-chosen teacher gate (--kd-gate), on
the micro synthetic benchmark: the added queries' forms, what kd_written.pt holds, and the gate's two extremes."""
import json
import os
import shutil
from collections import Counter

import pytest
import torch

import data
import train
from encoded import EncodedData
from outdir import OutDir

MICRO = ["--preset", "micro", "--log-every", "60"]


@pytest.fixture(scope="module")
def taught(micro, tmp_path_factory):
    """A micro run up to the teachers, with a written query for every training passage."""
    out = str(tmp_path_factory.mktemp("taught"))
    assert train.main(["--data", micro, "--out", out, *MICRO, "--kd-written", "1", "--stages",
                       "pretrain,de,qg,ce,teach"]) == 0
    return out


def copy_of(run, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(run, out)
    os.remove(os.path.join(out, "config.json"))  # the copies below change settings that the stages up to teach ignore
    return out


def test_added_queries_get_every_form(micro, tmp_path):
    out = OutDir(str(tmp_path))
    d = EncodedData.tokenized(data.load(micro), out, 300, 12, 24, "en")
    before = {k: getattr(d, k).clone() for k in ("Q_ids", "Q_mask", "T_ids", "T_mask")}
    n, long = len(d.qids), list(range(40, 40 + before["Q_ids"].size(1) + 3))  # longer than any query so far
    d.add_queries(["w0", "w1"], ["qc", "qd"], [[40, 41, 42], long], [5, 7])
    assert d.qids[n:] == ["w0", "w1"] and d.query_tokens(["w1", "w0"]) == [long, [40, 41, 42]]
    assert d.qrow["w0"] == n and d.qrow["w1"] == n + 1 and d.pos["w1"] == [7] and d.lang("w0") == "qc"
    assert d.Q_ids[n].tolist()[:5] == [data.Q, 40, 41, 42, data.PAD] and d.Q_mask[n].sum() == 4
    assert d.Q_ids[n + 1].tolist() == [data.Q] + long and bool(d.Q_mask[n + 1].all())
    assert d.T_ids[n + 1].tolist() == [d.tag["qd"]] + long + [data.EOS] and bool(d.T_mask[n + 1].all())
    for k, v in before.items():  # the data set's own rows are unchanged, the padding grown by 4
        T = v.size(1)
        assert getattr(d, k).size(1) == T + 4 and torch.equal(getattr(d, k)[:n, :T], v) and not getattr(d, k)[:n, T:].any()
    with pytest.raises(ValueError, match="already in use"):
        d.add_queries(["w0"], ["qc"], [[40]], [5])
    with pytest.raises(ValueError, match="without a tag"):
        d.add_queries(["w9"], ["xx"], [[40]], [5])


def test_written_distillation_queries(taught, micro):
    ds = data.load(micro)
    w = torch.load(os.path.join(taught, "kd_written.pt"), weights_only=True)
    n_train = Counter(ds.lang[q] for q in ds.qrels["train"])
    first = {next(p for p, s in rel.items() if s > 0) for rel in ds.qrels["train"].values() if any(rel.values())}
    rows = [ds.pids[r] for r in w["rows"]]
    assert len(set(rows)) == len(rows) and set(rows) <= first        # distinct first positives of training queries
    assert len(rows) >= 0.95 * len(first)                            # share 1: all (but any written empty)
    assert set(w["lang"]) <= set(n_train) and all(w["tokens"])                      # trained languages, not empty
    low = sum(n_train[x] < max(n_train.values()) for x in w["lang"]) / len(w["lang"])
    assert low > 0.7  # weights 1/n_train: qc and qd (8 queries) each ten times as likely as qa and qb (80)
    assert w["cand"].shape == (len(rows), 5) and w["cand"][:, 0].tolist() == w["rows"]   # p+ = its own passage
    assert all(w["cand"][i, 0] not in w["cand"][i, 1:] for i in range(len(rows)))
    assert all(t.shape == w["cand"].shape and torch.isfinite(t).all() for t in (w["de"], w["qg"], w["ce"]))


def students(out):
    return {n: torch.load(os.path.join(out, f"{n}.pt"), weights_only=True)["model"] for n in ("de_ft", "qg_kd")}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_gate_that_trusts_no_language_is_the_control(taught, micro, tmp_path):
    """With every teacher rate 0 no row is distilled: qg_kd trains on the control's batches with L_ce alone."""
    out = copy_of(taught, tmp_path)
    r = json.load(open(os.path.join(out, "teachers.json")))
    zero = {k: {t: {x: 0.0 for x in v} for t, v in rates.items()} for k, rates in r["dev"].items()}
    with open(os.path.join(out, "teachers.json"), "w") as f:
        json.dump({"dev": zero}, f)
    assert train.main(["--data", micro, "--out", out, *MICRO, "--kd-written", "1", "--kd-gate", "true",
                       "--stages", "kd"]) == 0
    s = students(out)
    assert same(s["de_ft"], s["qg_kd"])


def test_gate_that_trusts_every_language_is_no_gate(taught, micro, tmp_path):
    outs = []
    for gate, rate in (("true", 1.0), ("false", None)):
        out = copy_of(taught, tmp_path / gate)
        if rate is not None:  # the teachers perfect, the warm DE at 0, in every language
            r = json.load(open(os.path.join(out, "teachers.json")))["dev"]
            r = {k: {t: {x: (0.0 if t == "de" or k.startswith("blind") else rate) for x in v} for t, v in rates.items()}
                 for k, rates in r.items()}
            with open(os.path.join(out, "teachers.json"), "w") as f:
                json.dump({"dev": r}, f)
        assert train.main(["--data", micro, "--out", out, *MICRO, "--kd-written", "1", "--kd-gate", gate,
                           "--stages", "kd"]) == 0
        outs.append(students(out))
    assert same(outs[0]["qg_kd"], outs[1]["qg_kd"]) and not same(outs[0]["qg_kd"], outs[0]["de_ft"])


def test_share_zero_writes_none(taught, micro, tmp_path):
    out = copy_of(taught, tmp_path)
    os.remove(os.path.join(out, "kd_written.pt"))
    assert train.main(["--data", micro, "--out", out, *MICRO, "--stages", "teach"]) == 0
    w = torch.load(os.path.join(out, "kd_written.pt"), weights_only=True)
    assert w["qids"] == [] and w["cand"].shape == (0, 5)


def test_written_rows_teach_by_their_teacher_scores_alone(taught, micro, tmp_path):
    """The teacher's scores of the written queries, reversed: the student changes, the control (alpha = 0, whose
    L_ce sees the training rows and their candidates only) stays bit for bit the same."""
    runs = []
    for flip in (False, True):
        out = copy_of(taught, tmp_path / str(flip))
        if flip:
            w = torch.load(os.path.join(out, "kd_written.pt"), weights_only=True)
            torch.save({**w, "qg": w["qg"].flip(1)}, os.path.join(out, "kd_written.pt"))
        assert train.main(["--data", micro, "--out", out, *MICRO, "--kd-written", "1", "--stages", "kd"]) == 0
        runs.append(students(out))
    assert same(runs[0]["de_ft"], runs[1]["de_ft"]) and not same(runs[0]["qg_kd"], runs[1]["qg_kd"])


def test_with_bm25_interleaves_once_each(micro, tmp_path, monkeypatch):
    d = EncodedData.tokenized(data.load(micro), OutDir(str(tmp_path)), 300, 12, 24, "en")
    monkeypatch.setattr(d, "bm25_ranking", lambda queries, k: torch.tensor([[2, 5, -1, -1], [-1, -1, -1, -1]]))
    got = d.with_bm25(d.qids[:2], torch.tensor([[1, 2, 3, 4], [7, 8, 9, 6]]))
    assert got.tolist() == [[1, 2, 5, 3], [7, 8, 9, 6]]   # d1 b1 (=d2, once) b2 d3; no BM25 match: the DE's alone


def test_union_candidates_hold_bm25s_best(taught, micro, tmp_path):
    """--kd-union: each training query's C(q) holds BM25's best passage that is not a positive."""
    out = copy_of(taught, tmp_path)
    for f in ("kd_cache.pt", "kd_written.pt", "teachers.json"):
        os.remove(os.path.join(out, f))
    assert train.main(["--data", micro, "--out", out, *MICRO, "--kd-union", "true", "--stages", "teach"]) == 0
    c = torch.load(os.path.join(out, "kd_cache.pt"), weights_only=True)
    d = EncodedData.tokenized(data.load(micro), OutDir(out), 700, 32, 48, "en")
    ranked = d.bm25_ranking(d.query_tokens(c["qids"]), 10).tolist()
    best = [next((p for p in row if p >= 0 and p not in d.pos[q]), None) for q, row in zip(c["qids"], ranked)]
    assert sum(b is not None for b in best) > len(best) / 2
    assert all(b in row for b, row in zip(best, c["cand"].tolist()) if b is not None)
