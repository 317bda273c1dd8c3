"""train.py at the door: every bad flag, bad input file and damaged run folder ends with exactly one line
`error: ...` on stderr and status 1, leaving nothing new on disk; a diverging loss saves nothing for its stage; a
run folder remembers the data and settings it was trained with; leftovers of a killed run are removed."""
import json
import os
import random
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import data
import outdir
import train
from model import Encoder
from outdir import OutDir, Stop

MICRO = ["--preset", "micro", "--log-every", "60"]
SHORT = [*MICRO, "--mlm-steps", "2", "--denoise-steps", "2", "--de-steps", "2"]  # the `trained` folder's settings
STAGES = "tokenizer, pretrain, de, qg, ce, teach, kd, align, drdecr, eval"


@pytest.fixture(scope="module")
def trained(micro, tmp_path_factory):
    """A run folder with the tokenizer and a few steps of pretrain and de: pretrain.pt, qg_pretrain.pt, de.pt."""
    out = str(tmp_path_factory.mktemp("trained"))
    assert train.main(["--data", micro, "--out", out, "--stages", "pretrain,de", *SHORT]) == 0
    return out


def files(*roots):
    return {os.path.join(d, f): os.path.getsize(os.path.join(d, f)) for r in roots for d, _, fs in os.walk(r) for f in fs}


def write(path, content):
    with open(path, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)


def copy_data(p):
    p.data = shutil.copytree(p.data, os.path.join(p.tmp, "data"))


def old_config(p):  # the fingerprint before content hashes: {"data": path, **config}
    write(os.path.join(p.run, "config.json"), json.dumps({"data": p.data, **vars(train.Config())}))


def partial_of_another_kind(p):  # a whole model checkpoint where the qg stage's partial state belongs
    shutil.copy(os.path.join(p.run, "de.pt"), os.path.join(p.run, "qg_gen.partial.pt"))


# (id, what to break (p: tmp, data, run = a copy of `trained`, new = a folder not made yet), flags (formatted with p),
#  the one line after `error: `). Every flag list runs with --data {data} first and the trained folder's settings.
CASES = [
    ("threads 0", None, ["--out", "{new}", "--threads", "0"], "--threads 0: must be in [1, inf)"),
    ("threads < 0", None, ["--out", "{new}", "--threads=-3"], "--threads -3: must be in [1, inf)"),
    ("threads not a number", None, ["--threads", "x"], "argument --threads: invalid int value: 'x'"),
    ("stages empty", None, ["--out", "{new}", "--stages", ""], f"--stages '': unknown stage; choose from {STAGES}"),
    ("stages trailing comma", None, ["--stages", "de,"], f"--stages 'de,': unknown stage; choose from {STAGES}"),
    ("unknown flag", None, ["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ("bad boolean", None, ["--normalize", "maybe"],
     "argument --normalize: 'maybe' is not a boolean (true/false, yes/no, 1/0)"),
    ("infinite float", None, ["--lr", "inf"], "--lr inf: must be a finite number"),
    ("int overflow", None, ["--out", "{new}", "--seed", str(2 ** 40)], "--seed 1099511627776: must be below 2147483648"),
    ("out of range", None, ["--out", "{new}", "--pool", "0"], "--pool 0: must be in [1, inf)"),
    ("choice", None, ["--out", "{new}", "--align", "x"], "--align 'x': choose from dist, kd, emb"),
    ("fields disagree", None, ["--out", "{new}", "--dim", "33"], "--dim must be a multiple of --n-heads"),
    ("vocabulary too small", None, ["--out", "{new}", "--vocab-size", "5"], "--vocab-size must be 0 (sized to the data) or >= 64"),
    ("corpus too small", None, ["--out", "{new}", "--pool", "300"],
     "{data}/corpus.jsonl:0: 280 passages; --pool, --teacher-pool and --kd-k need 301"),
    ("teacher lists too long", None, ["--out", "{new}", "--rank-negs", "5"], "--rank-negs must be at most --teacher-pool"),
    ("input not made", None, ["--out", "{new}", "--stages", "kd"],
     "{new}/kd_cache.pt: not found; stage kd needs it: add stage teach to --stages"),
    ("data missing", None, ["--data", "{tmp}/nope", "--out", "{new}"], "{tmp}/nope:0: not a directory"),
    ("data bad", lambda p: (copy_data(p), write(f"{p.data}/queries.jsonl", "{")), ["--out", "{new}"],
     "{data}/queries.jsonl:1: invalid JSON (Expecting property name enclosed in double quotes)"),
    ("out a file", lambda p: write(p.new, "x"), ["--out", "{new}"], "{new}: not a folder (--out)"),
    ("out under a file", lambda p: write(p.new, "x"), ["--out", "{new}/run"],
     "{new}/run: cannot make the folder (Not a directory) (--out)"),
    ("config.json not JSON", lambda p: write(f"{p.run}/config.json", "{oops"), ["--out", "{run}"],
     "{run}/config.json: not a config.json of train.py (Expecting property name enclosed in double quotes: line 1 "
     "column 2 (char 1)); use a new --out"),
    ("config.json of an older version", old_config, ["--out", "{run}"],
     "{run}/config.json: not a config.json of this version of train.py; use a new --out"),
    ("setting changed", None, ["--out", "{run}", "--kd-k", "5"],
     "{run}/config.json: this folder was trained with --kd-k 4, now 5; use a new --out"),
    ("data changed", lambda p: (copy_data(p), write(f"{p.data}/qrels/train.tsv", open(f"{p.data}/qrels/train.tsv").read()
                                                    + "train-qa-0\tp5\t0\n")), ["--out", "{run}"],
     "{run}/config.json: the data set's qrels/train.tsv changed since this folder was made; use a new --out"),
    ("data file gone", lambda p: (copy_data(p), os.remove(f"{p.data}/answers.jsonl")), ["--out", "{run}"],
     "{run}/config.json: the data set's answers.jsonl is gone since this folder was made; use a new --out"),
    ("checkpoint empty", lambda p: write(f"{p.run}/de.pt", b""), ["--out", "{run}", "--stages", "qg"],
     "{run}/de.pt: not a readable checkpoint (empty); delete it and run again: stage de will remake it"),
    ("checkpoint truncated", lambda p: write(f"{p.run}/pretrain.pt", open(f"{p.run}/pretrain.pt", "rb").read()[:999]),
     ["--out", "{run}", "--stages", "eval"],
     "{run}/pretrain.pt: not a readable checkpoint (truncated?); delete it and run again: stage pretrain will remake it"),
    ("partial garbage", lambda p: write(f"{p.run}/qg_gen.partial.pt", b"\x80garbage"), ["--out", "{run}"],
     "{run}/qg_gen.partial.pt: not a readable checkpoint (truncated?); delete it and run again: qg_gen restarts from "
     "step 0"),
    ("partial of another kind", partial_of_another_kind, ["--out", "{run}", "--stages", "qg"],
     "{run}/qg_gen.partial.pt: not a partial state of this stage; delete it and run again: qg_gen restarts from step 0"),
    ("runs a file", lambda p: write(f"{p.run}/runs", "x"), ["--out", "{run}", "--stages", "eval"],
     "{run}/runs: not a folder; delete it and run again: stage eval will remake it"),
    ("tokenizer garbage", lambda p: write(f"{p.run}/tokenizer.json", "{}"), ["--out", "{run}"],
     "{run}/tokenizer.json: not a readable tokenizer (*); delete it and run again: stage tokenizer will remake it"),
    ("encode: run in a missing folder", None, ["--encode", "{run}/de.pt", "--run", "{tmp}/no/run.trec"],
     "{tmp}/no/run.trec: no folder {tmp}/no (--run names the file to write)"),
    ("encode: run is a folder", None, ["--encode", "{run}/de.pt", "--run", "{tmp}"],
     "{tmp}: a folder (--run names the file to write)"),
    ("encode: not a dual-encoder", None, ["--encode", "{run}/qg_pretrain.pt", "--run", "{tmp}/run.trec"],
     "{run}/qg_pretrain.pt: holds a model of class QueryGenerator, not DualEncoder"),
    ("encode: not a model", lambda p: torch.save({"x": 1}, f"{p.run}/x.pt"), ["--encode", "{run}/x.pt", "--run", "{tmp}/r"],
     "{run}/x.pt: not a model checkpoint of train.py"),
    ("encode: garbage", lambda p: write(f"{p.run}/de.pt", "not a checkpoint"), ["--encode", "{run}/de.pt", "--run", "{tmp}/r"],
     "{run}/de.pt: not a readable checkpoint (truncated?); delete it and run again: stage de will remake it"),
    ("encode: a folder", None, ["--encode", "{run}", "--run", "{tmp}/r"],
     "{run}: not a file (--encode takes a checkpoint in the output folder of a run)"),
    ("encode: outside a run folder", lambda p: shutil.copy(f"{p.run}/de.pt", f"{p.tmp}/de.pt"),
     ["--encode", "{tmp}/de.pt", "--run", "{tmp}/r"],
     "{tmp}/config.json: not found (--encode takes a checkpoint in the output folder of a run)"),
    ("encode: unknown split", None, ["--encode", "{run}/de.pt", "--split", "x", "--run", "{tmp}/r"],
     "{data}/qrels/x.tsv: not found (--split)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(case, micro, trained, tmp_path, capsys):
    _, damage, flags, message = case
    p = SimpleNamespace(tmp=str(tmp_path), data=micro, run=shutil.copytree(trained, str(tmp_path / "run")),
                        new=str(tmp_path / "new"))
    if damage:
        damage(p)
    argv = ["--data", p.data, *SHORT, *(f.format(**vars(p)) for f in flags)]
    before = files(p.tmp, micro, trained)
    capsys.readouterr()
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n")
    head, _, tail = ("error: " + message.format(**vars(p)) + "\n").partition("*")  # * stands for a library's words
    assert err.startswith(head) and err.endswith(tail), err
    assert files(p.tmp, micro, trained) == before


def test_the_command_line_exits_with_status_1_and_no_traceback(tmp_path):
    write(str(tmp_path / "f"), "x")
    r = subprocess.run([sys.executable, "train.py", "--out", str(tmp_path / "f"), "--threads", "1"],
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (1, f"error: {tmp_path}/f: not a folder (--out)\n")


def test_a_nan_loss_stops_the_stage_and_saves_nothing(micro, tmp_path, capsys, monkeypatch):
    """The MLM loss turns NaN at step 7, after the step-5 partial state: that is dropped too, and nothing else of
    the stage is written."""
    out, calls, partial_seen = str(tmp_path / "out"), [], []
    real = Encoder.mlm_logits

    def diverging(self, h):
        calls.append(1)
        if len(calls) == 7:
            partial_seen.append(os.path.exists(os.path.join(out, "pretrain.partial.pt")))
            return real(self, h) * float("nan")
        return real(self, h)
    monkeypatch.setattr(Encoder, "mlm_logits", diverging)
    assert train.main(["--data", micro, "--out", out, *MICRO, "--stages", "pretrain", "--mlm-steps", "10"]) == 1
    assert capsys.readouterr().err == ("error: stage pretrain: the loss is nan at step 7; nothing was saved for this "
                                       "stage (a lower --lr, in a new --out?)\n")
    assert partial_seen == [True] and sorted(os.listdir(out)) == ["config.json", "tokenizer.json"]


def test_a_diverging_learning_rate_is_caught(micro, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert train.main(["--data", micro, "--out", out, *MICRO, "--stages", "pretrain", "--lr", "1e30"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: stage pretrain: the loss is ") and err.count("\n") == 1
    assert sorted(os.listdir(out)) == ["config.json", "tokenizer.json"]


def test_leftovers_of_a_killed_run_are_removed(micro, tmp_path, capsys, monkeypatch):
    """A run killed between saving a stage's model and removing its partial state (drop does nothing here) leaves
    the partial behind, as a killed write leaves a .tmp; the next run removes both and says so."""
    out, flags = str(tmp_path / "out"), ["--data", micro, *MICRO, "--stages", "pretrain", "--mlm-steps", "12",
                                         "--denoise-steps", "7"]
    monkeypatch.setattr(OutDir, "drop", lambda self, name: None)
    assert train.main([*flags, "--out", out]) == 0
    assert {"pretrain.partial.pt", "denoise.partial.pt", "pretrain.pt", "qg_pretrain.pt"} <= set(os.listdir(out))
    monkeypatch.undo()
    write(os.path.join(out, "de.pt.tmp"), b"half")
    capsys.readouterr()
    assert train.main([*flags, "--out", out]) == 0
    log = capsys.readouterr().out
    assert "removed denoise.partial.pt: qg_pretrain.pt is finished" in log
    assert "removed pretrain.partial.pt: pretrain.pt is finished" in log and f"removed {out}/de.pt.tmp" in log
    assert sorted(os.listdir(out)) == ["config.json", "pretrain.pt", "qg_pretrain.pt", "tokenizer.json"]


def test_settings_that_train_nothing_and_the_data_path_may_change(micro, trained, tmp_path, capsys):
    run, data = shutil.copytree(trained, str(tmp_path / "run")), shutil.copytree(micro, str(tmp_path / "moved"))
    made = open(os.path.join(run, "config.json")).read()
    assert train.main(["--data", data, "--out", run, *SHORT, "--stages", "tokenizer", "--eval-k", "7",
                       "--ckpt-every", "3", "--log-every", "1"]) == 0
    assert open(os.path.join(run, "config.json")).read() == made
    assert set(json.loads(made)["data"]) == {"corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/dev.tsv",
                                            "qrels/test.tsv", "answers.jsonl", "translations.jsonl",
                                            *(f"unlabelled/{x}.txt" for x in ("en", "qa", "qb", "qc", "qd", "qe"))}
    assert not {"eval_k", "ckpt_every", "log_every"} & set(json.loads(made)["settings"])


def test_encode_uses_this_commands_eval_k_and_a_one_word_tag(micro, trained, tmp_path):
    run = shutil.copytree(trained, str(tmp_path / "run"))
    shutil.copy(os.path.join(run, "de.pt"), os.path.join(run, "my de.pt"))
    trec = str(tmp_path / "run.trec")
    assert train.main(["--data", micro, "--encode", os.path.join(run, "my de.pt"), "--run", trec, "--eval-k", "7"]) == 0
    rows = [line.split() for line in open(trec)]
    assert {r[5] for r in rows} == {"my_de.pt"} and len(rows) == 7 * len(data.load(micro).qrels["test"])


def test_difference_names_the_first_change():
    made = {"settings": {"dim": 32, "lr": 0.1}, "data": {"a.tsv": "1", "b.tsv": "2"}}
    assert outdir.difference(made, made) is None
    assert outdir.difference(made, {**made, "settings": {"dim": 32, "lr": 0.2}}) == \
        "this folder was trained with --lr 0.1, now 0.2"
    assert outdir.difference(made, {**made, "settings": {"dim": 32, "lr": 0.1, "new_flag": 1}}) == \
        "this folder was trained with --new-flag (no such setting), now 1"
    assert outdir.difference(made, {**made, "data": {"a.tsv": "1", "b.tsv": "3"}}) == \
        "the data set's b.tsv changed since this folder was made"
    assert outdir.difference(made, {**made, "data": {"a.tsv": "1", "b.tsv": "2", "c.tsv": "0"}}) == \
        "the data set's c.tsv is new since this folder was made"


def test_a_damaged_checkpoint_is_always_a_stop(trained, tmp_path):
    """Truncated, bit-flipped and random files: OutDir.load returns or stops with the one-line message, never
    another exception; a truncated one is already caught by the zip check at the start of a run (tidy)."""
    good, rng = open(os.path.join(trained, "de.pt"), "rb").read(), random.Random(0)
    out = OutDir(str(tmp_path), {"de.pt": "de"})
    variants = [good[:rng.randrange(len(good))] for _ in range(15)] + [rng.randbytes(rng.randrange(1, 3000)) for _ in range(15)]
    for _ in range(15):
        b = bytearray(good)
        i = rng.randrange(len(b))
        b[i:i + 8] = rng.randbytes(8)
        variants.append(bytes(b))
    stops = 0
    for i, v in enumerate(variants):
        write(out.path("de.pt"), v)
        try:
            out.load("de.pt")
        except Stop as e:
            stops += 1
            assert str(e).startswith(f"{out.path('de.pt')}: not a readable checkpoint") and "\n" not in str(e)
        if i < 15:
            with pytest.raises(Stop, match="not a readable checkpoint"):
                out.tidy()
    assert stops >= 30


@pytest.mark.parametrize("fault", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_an_interrupted_or_refused_write_leaves_no_temp_file(tmp_path, monkeypatch, fault):
    path = str(tmp_path / "x.json")
    outdir.atomic_write(path, "old")

    def fsync(fd):
        raise fault
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt if isinstance(fault, KeyboardInterrupt) else Stop) as e:
        outdir.atomic_write(path, "new")
    assert os.listdir(tmp_path) == ["x.json"] and open(path).read() == "old"
    if isinstance(fault, OSError):
        assert str(e.value) == f"{path}: cannot write (No space left on device)"
