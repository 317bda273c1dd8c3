"""train.py end to end on the micro synthetic benchmark: every output exists and parses, training beats no training,
an interrupted run resumes to the same numbers, bad or partial data sets are handled."""
import json
import os
import re
import shutil

import pytest
import torch

import data
import encoded
import evaluate
import outdir
import report
import train
from model import DualEncoder, ModelConfig
from outdir import OutDir
from report import METRICS, SYSTEMS
from teacher import CrossEncoder, QueryGenerator

MICRO = ["--preset", "micro", "--log-every", "60"]  # the tests' settings are the micro preset


@pytest.fixture(scope="module")
def full_run(micro, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out"))
    assert train.main(["--data", micro, "--out", out, *MICRO]) == 0
    return out


def test_every_output_exists_and_parses(full_run, micro):
    res = json.load(open(os.path.join(full_run, "results.json")))
    assert list(res["systems"]) == ["bm25", *SYSTEMS, "hybrid"] and res["split"] == "test"
    assert res["hybrid"]["dense"] in SYSTEMS and 0 <= res["hybrid"]["weight"] <= 1
    ds = data.load(micro)
    for name in res["systems"]:
        for split in ("dev", "test"):
            run = evaluate.read_run(os.path.join(full_run, "runs", f"{name}.{split}.trec"))
            assert set(run) == set(ds.qrels[split]) and all(len(r) == 20 for r in run.values())
        assert set(res["systems"][name]["per_lang"]) == {"qa", "qb", "qc", "qd", "qe"}
        assert set(res["systems"][name]["all"]) == set(METRICS + ["r@2kt", "r@5kt"])
    md = open(os.path.join(full_run, "results.md"), encoding="utf-8").read()
    assert "## recall@100" in md and "| qg_kd_align |" in md and "qc (8)" in md
    for name in SYSTEMS + ["pretrain", "qg", "ce"]:
        ck = torch.load(os.path.join(full_run, f"{name}.pt"), weights_only=True)
        assert set(ck) == {"model", "config", "cls"}
    for name in ("qg", "ce"):  # judged every 4 steps of 10 (micro's teacher_select) and after the last
        sel = json.load(open(os.path.join(full_run, f"{name}.select.json")))
        assert sel["every"] == 4 and [j[0] for j in sel["judged"]] == [4, 8, 10]
        assert [sel["step"], sel["rate"]] == list(outdir.chosen(sel["judged"]))
    assert not [f for f in os.listdir(full_run) if f.endswith((".tmp", ".partial.pt"))]


def test_trained_de_beats_untrained(full_run, micro):
    """On its own training queries, the trained DE ranks positives far higher than a randomly initialised one."""
    cfg, out = train.cli.parse_args(["--data", micro, *MICRO], "", train.Config, train.PRESETS, train.NAMES, train.SYNTH_SIZE)[1], OutDir(full_run)
    d = train.stage_tokenizer(cfg, data.load(micro), out)
    qids = d.train

    def mrr(de):
        scores, ids = d.retrieve(cfg.eval_k, de, {"train": qids})["train"]
        ranked = {q: {d.ds.pids[i]: s for i, s in zip(row, srow)} for q, row, srow in zip(qids, ids.tolist(), scores.tolist())}
        return evaluate.evaluate(d.ds.qrels["train"], ranked, ["mrr@10"])["all"]["mrr@10"]
    untrained = out.new_model(DualEncoder, d.model_config(cfg), cfg.seed).eval()
    trained, untrained = mrr(out.load_model(DualEncoder, "de.pt")), mrr(untrained)
    assert trained > untrained + 0.1, (trained, untrained)


def test_interrupted_run_resumes_to_identical_results(full_run, micro, tmp_path, monkeypatch):
    """Stop after the de stage, then kill the run inside qg_gen's training (after its step-5 checkpoint); running
    the same command again must end with the same weights and results as the uninterrupted run."""
    out = str(tmp_path / "out")
    assert train.main(["--data", micro, "--out", out, "--stages", "pretrain,de", *MICRO]) == 0
    calls = {"n": 0}
    real = train.QueryGenerator.loss

    def dying(self, *a):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(self, *a)
    monkeypatch.setattr(train.QueryGenerator, "loss", dying)
    assert train.main(["--data", micro, "--out", out, *MICRO]) == 130  # Ctrl-C: one line, no traceback
    assert os.path.exists(os.path.join(out, "qg_gen.partial.pt"))
    monkeypatch.setattr(train.QueryGenerator, "loss", real)
    assert train.main(["--data", micro, "--out", out, *MICRO]) == 0
    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (full_run, out))
    assert a["systems"] == b["systems"] and a["dev"] == b["dev"]
    for name in ("qg", "qg_kd_align"):
        wa, wb = (torch.load(os.path.join(d, f"{name}.pt"), weights_only=True)["model"] for d in (full_run, out))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_killed_teacher_resumes_to_the_same_choice(full_run, micro, tmp_path, monkeypatch):
    """Kill the CE's training at its step 6, after its step-4 judgement and its step-5 checkpoint: the partial state
    keeps the judgements and the best weights, and the same command again ends with the uninterrupted run's ce.pt
    and choice."""
    out = str(tmp_path / "out")
    shutil.copytree(full_run, out)
    for name in ("ce.pt", "ce.select.json"):
        os.remove(os.path.join(out, name))
    calls, real = {"n": 0}, CrossEncoder.forward

    def dying(self, *a):  # a forward per step, two per judgement (25 dev queries, 16 a chunk): call 8 is step 6
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(self, *a)
    monkeypatch.setattr(CrossEncoder, "forward", dying)
    assert train.main(["--data", micro, "--out", out, "--stages", "ce", *MICRO]) == 130
    partial = torch.load(os.path.join(out, "ce.partial.pt"), weights_only=True)
    assert partial["step"] == 5 and [j[0] for j in partial["judged"]] == [4] and partial["best"] is not None
    monkeypatch.setattr(CrossEncoder, "forward", real)
    assert train.main(["--data", micro, "--out", out, "--stages", "ce", *MICRO]) == 0
    wa, wb = (torch.load(os.path.join(d, "ce.pt"), weights_only=True)["model"] for d in (full_run, out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (json.load(open(os.path.join(d, "ce.select.json"))) for d in (full_run, out))
    assert sa == sb


def test_chosen_by_hand():
    """The highest score; among equal scores the earliest step (the last step is a judgement like the others)."""
    assert outdir.chosen([(4, 0.25), (8, 0.5), (12, 0.5), (15, 0.375)]) == (8, 0.5)
    assert outdir.chosen([(4, 0.25), (8, 0.125), (10, 0.5)]) == (10, 0.5)
    assert outdir.chosen([(4, 0.0), (8, 0.0)]) == (4, 0.0)
    assert outdir.chosen([(10, 0.3)]) == (10, 0.3)


def test_fit_saves_the_best_judged_weights(tmp_path):
    """fit on a toy model with a judge that scores 0.2, 0.6, 0.6, 0.1 at steps 3, 6, 9, 10 (teacher_select 3 of 10,
    and the last): the weights of step 6 are saved. With teacher_select 0 and no judge, the last step's are, and
    they are the weights the judge saw last: judging changes no step."""
    def run(select, judge):
        cfg = train.Config(ckpt_every=4, teacher_select=select, log_every=60)
        torch.manual_seed(0)
        model = DualEncoder(ModelConfig(vocab_size=50, dim=8, n_layers=1, n_heads=2, max_len=8, dropout=0.1))

        def step(gen):
            x = torch.randint(4, 50, (4, 6), generator=gen)
            return (model.encode(x, torch.ones_like(x, dtype=torch.bool)) - 1).pow(2).mean(), {}
        out = OutDir.create(str(tmp_path / f"out{select}"))
        train.fit(cfg, out, "toy", model, 10, step, "toy.pt", judge=judge)
        return out, torch.load(out.path("toy.pt"), weights_only=True)["model"]
    seen, scores = [], iter([0.2, 0.6, 0.6, 0.1])

    def judge(m):
        assert not m.training
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)
    out, chosen = run(3, judge)
    assert len(seen) == 4 and all(torch.equal(chosen[k], seen[1][k]) for k in chosen)
    assert json.load(open(out.path("toy.select.json"))) == {"every": 3, "step": 6, "rate": 0.6,
                                                            "judged": [[3, 0.2], [6, 0.6], [9, 0.6], [10, 0.1]]}
    out, last = run(0, None)
    assert not out.exists("toy.select.json") and not all(torch.equal(last[k], chosen[k]) for k in last)
    assert all(torch.equal(last[k], seen[-1][k]) for k in last)


def test_judge_matches_the_teach_stage_scoring(full_run, micro, monkeypatch):
    """dev_judge's rate of a teacher = the share of the dev sample where its score_candidates score of p+ beats
    every other candidate's, for the QG and the CE; the sample is capped at SELECT_DEV, seeded, in query order."""
    cfg = train.cli.parse_args(["--data", micro, *MICRO], "", train.Config, train.PRESETS, train.NAMES, train.SYNTH_SIZE)[1]
    out = OutDir(full_run)
    d = train.stage_tokenizer(cfg, data.load(micro), out)
    de, qg, ce = (out.load_model(cls, f"{n}.pt") for cls, n in ((DualEncoder, "de"), (QueryGenerator, "qg"), (CrossEncoder, "ce")))
    monkeypatch.setattr(encoded, "SELECT_DEV", 10)
    qids = d.dev_sample(cfg.seed)
    assert len(qids) == 10 and set(qids) < set(d.dev) and qids == sorted(qids, key=d.qrow.get)
    assert qids == d.dev_sample(cfg.seed) and qids != d.dev_sample(cfg.seed + 1)
    judge = d.dev_judge(de, cfg.kd_k, cfg.seed, 60, False, "test")
    c = d.score_candidates(de, qg, ce, qids, cfg.kd_k, cfg.seed, 60)
    for teacher, s in ((qg, c.qg), (ce, c.ce)):
        slow = sum(all(row[0] > x for x in row[1:]) for row in s.tolist()) / len(qids)
        assert judge(teacher) == pytest.approx(slow, abs=1e-6)


def test_stage_without_its_input_is_skipped(micro, tmp_path, capsys):
    root = str(tmp_path / "data")
    shutil.copytree(micro, root)
    os.remove(os.path.join(root, "translations.jsonl"))
    assert train.main(["--data", root, "--out", str(tmp_path / "out"), "--stages", "drdecr", *MICRO]) == 0
    assert "[drdecr] skipped: no training query has a translation" in capsys.readouterr().out


def test_bad_data_set_stops_before_training(micro, tmp_path, capsys):
    root = str(tmp_path / "data")
    shutil.copytree(micro, root)
    with open(os.path.join(root, "qrels", "train.tsv"), "a") as f:
        f.write("train-qa-0\tnope\t1\n")
    out = str(tmp_path / "out")
    assert train.main(["--data", root, "--out", out, *MICRO]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "train.tsv:" in err and "unknown corpus id 'nope'" in err and "\n" not in err
    assert not os.path.exists(out)


def test_out_folder_of_another_config_is_refused(full_run, micro, capsys):
    assert train.main(["--data", micro, "--out", full_run, *MICRO, "--seed", "1"]) == 1
    assert capsys.readouterr().err == (f"error: {full_run}/config.json: this folder was trained with --seed 0, now 1; "
                                       "use a new --out\n")


@pytest.mark.parametrize("variant", ["kd", "emb"])
def test_other_alignment_losses_train(full_run, micro, tmp_path, variant):
    """The `kd` and `emb` alignment variants run on the same cached candidates and generated queries."""
    out = str(tmp_path / "out")
    shutil.copytree(full_run, out)
    os.remove(os.path.join(out, "config.json"))
    os.remove(os.path.join(out, "qg_kd_align.pt"))
    assert train.main(["--data", micro, "--out", out, "--stages", "align", "--align", variant, *MICRO]) == 0
    a, b = (torch.load(os.path.join(d, "qg_kd_align.pt"), weights_only=True)["model"] for d in (full_run, out))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_missing_input_small_corpus_and_bad_config_are_one_line_errors(micro, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert train.main(["--data", micro, "--out", out, "--stages", "kd", *MICRO]) == 1
    assert capsys.readouterr().err.strip().endswith("kd_cache.pt: not found; stage kd needs it: add stage teach to --stages")
    assert train.main(["--data", micro, "--out", str(tmp_path / "o2"), *MICRO, "--pool", "300"]) == 1
    assert "corpus.jsonl:0: 280 passages; --pool, --teacher-pool and --kd-k need 301" in capsys.readouterr().err
    for flag, value, message in [("--align", "foo", "--align 'foo': choose from dist, kd, emb"),
                                 ("--teacher-frac", "0", "--teacher-frac 0.0: must be in (0, 1]")]:
        assert train.main(["--data", micro, "--out", out, *MICRO, flag, value]) == 1
        assert capsys.readouterr().err.strip() == f"error: {message}"


def test_a_less_regular_data_set(micro, tmp_path, capsys):
    """No dev split, several positives for some queries, a language with a single training query (and no oracle
    translation, so no DR.DECR), a query with no language outside the qrels, a passage far longer than max_len_p:
    the pipeline runs through, with written distillation queries and the dev gate, which has nothing to choose on."""
    root = str(tmp_path / "data")
    shutil.copytree(micro, root)
    os.remove(os.path.join(root, "qrels", "dev.tsv"))
    with open(os.path.join(root, "corpus.jsonl"), "a") as f:
        f.write(json.dumps({"_id": "long", "title": "Long", "text": "word " * 3000}) + "\n")
    with open(os.path.join(root, "queries.jsonl"), "a") as f:
        f.write(json.dumps({"_id": "orphan", "text": "no language"}) + "\n")
        f.write(json.dumps({"_id": "lone", "text": "Долгий", "lang": "ru"}) + "\n")
    with open(os.path.join(root, "qrels", "train.tsv"), "a") as f:
        f.write("train-qa-0\tp1\t1\ntrain-qa-1\tp2\t2\nlone\tlong\t1\n")
    out = str(tmp_path / "out")
    assert train.main(["--data", root, "--out", out, *MICRO, "--kd-written", "0.5", "--kd-gate", "true"]) == 0
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["split"] == "test" and res["dev"] == {} and list(res["systems"]) == ["bm25", *SYSTEMS, "hybrid"]
    assert not os.path.exists(os.path.join(out, "teachers.json"))
    said = capsys.readouterr().out
    assert "[kd] qg: distilled in every language (no dev queries to choose on)" in said
    assert "[qg_rank] no dev queries to choose a checkpoint on: the last step is kept" in said
    assert "[ce] no dev queries to choose a checkpoint on: the last step is kept" in said
    assert not os.path.exists(os.path.join(out, "qg.select.json"))
    said = re.search(r"\[drdecr\] (\d+) of (\d+) training queries have a translation", said)
    assert said and int(said[1]) == int(said[2]) - 1  # all but 'lone'; DR.DECR trains on those
    assert res["hybrid"] == {"dense": "de", "weight": 0.5}  # no dev split: the first system, an even weight


def test_fusion_by_hand():
    """Min-max per query and run, a missing passage 0 on that side, then w * dense + (1 - w) * sparse."""
    sparse = {"q": {"a": 4.0, "b": 2.0, "c": 0.0}}
    dense = {"q": {"b": 10.0, "d": 5.0}, "r": {"x": 1.0}}
    fused = report.fuse(sparse, dense, 0.25)
    assert fused["q"] == pytest.approx({"a": 0.75, "b": 0.25 + 0.375, "c": 0.0, "d": 0.0})
    assert fused["r"] == {"x": 0.25}  # a one-passage list normalises to 1
    assert report.fuse(sparse, dense, 0.0)["q"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.0})
