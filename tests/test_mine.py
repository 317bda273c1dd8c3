"""mine.py: the agreement rule against a loop, the sentence filter by hand, and on the micro benchmark with a briefly
trained run: the new data set is the original plus exactly the mined rows, loads, is the same file for file when mined
again, never turns a query's text into a training query, and every bad input is one line `error: ...`."""
import json
import os
import shutil

import pytest
import torch

import data
import mine
import train

RUN = ["--preset", "micro", "--log-every", "60", "--mlm-steps", "2", "--denoise-steps", "0", "--de-steps", "5"]
WIDE = ["--agree-k", "1000", "--threads", "1"]  # every sentence BM25 finds anything for is kept: rows to check


def reference_agree(de, bm, k):
    out = []
    for a, b in zip(de.tolist(), bm.tolist()):
        out.append(next((p for p in a[:k] if p >= 0 and p in b[:k]), -1))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_agree_is_the_first_dense_passage_within_both_top_k(seed):
    g = torch.Generator().manual_seed(seed)
    S, n = 30, 5
    de, bm = torch.randint(-1, 6, (S, n), generator=g), torch.randint(-1, 6, (S, n), generator=g)
    for k in range(1, n + 1):
        assert mine.agree(de, bm, k).tolist() == reference_agree(de, bm, k)


def test_agree_by_hand():
    de = torch.tensor([[3, 1], [3, 1], [-1, 2], [4, 5]])
    bm = torch.tensor([[3, 9], [1, 3], [-1, 2], [-1, -1]])
    assert mine.agree(de, bm, 1).tolist() == [3, -1, -1, -1]   # top-1 equal; -1 never agrees with -1
    assert mine.agree(de, bm, 2).tolist() == [3, 3, 2, -1]     # the DE's order decides between two shared ones


def test_sentences_skips_short_queries_and_repeats():
    lines = ["a b c", "a b", "Who  Is X", "who is x ?", "a b c", "A  B c", "d e f"]
    taken = {mine.norm("who is X")}
    keep, skipped = mine.sentences(lines, taken, 3, lambda t: len(t.split()))
    assert keep == [0, 3, 6] and skipped == {"short": 1, "a_query": 1, "repeated": 2}


@pytest.fixture(scope="module")
def run(micro, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    assert train.main(["--data", micro, "--out", out, "--stages", "pretrain,de", *RUN]) == 0
    return out


@pytest.fixture(scope="module")
def mined(run, micro, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mined") / "d2")
    assert mine.main(["--run", run, "--data", micro, "--out", out, *WIDE]) == 0
    return out


def files(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(root) for f in fs}


def test_the_new_data_set_is_the_old_plus_the_mined_rows(micro, mined):
    old, new, report = data.load(micro), data.load(mined), json.load(open(os.path.join(mined, "mined.json")))
    added = [q for q in new.queries if q not in old.queries]
    assert added and all(q.startswith("mined-") for q in added)
    assert {q: new.queries[q] for q in old.queries} == old.queries and {q: new.lang[q] for q in old.lang} == old.lang
    assert new.qrels["train"] == {**old.qrels["train"], **{q: new.qrels["train"][q] for q in added}}
    assert all(new.qrels[s] == old.qrels[s] for s in ("dev", "test"))
    assert set(new.qrels["train"]) - set(old.qrels["train"]) == set(added)
    assert sorted(report["languages"]) == ["qa", "qb", "qc", "qd"]  # not the pivot; qe has no training query
    texts = {mine.norm(t) for t in old.queries.values()}
    for lang, r in report["languages"].items():
        mine_lang = [q for q in added if new.lang[q] == lang]
        assert mine_lang == [f"mined-{lang}-{n}" for n in range(r["kept"])]
        assert r["kept"] == r["agreed"] and r["tried"] + sum(r["skipped"].values()) == r["sentences"]
        lines = old.unlabelled[lang]
        pids = [x.strip() for x in open(os.path.join(micro, "unlabelled", f"{lang}.pids"))]
        right = [pids[lines.index(new.queries[q])] in new.qrels["train"][q] for q in mine_lang]
        assert r["truth"]["precision"] == (round(sum(right) / len(right), 4) if right else None)
        assert all(len(new.qrels["train"][q]) == 1 and mine.norm(new.queries[q]) not in texts for q in mine_lang)
    unchanged = {n: b for n, b in files(micro).items() if n not in ("queries.jsonl", "qrels/train.tsv")}
    assert {n: b for n, b in files(mined).items() if n in unchanged} == unchanged
    assert set(files(mined)) == set(files(micro)) | {"mined.json"}
    assert files(mined)["queries.jsonl"].startswith(files(micro)["queries.jsonl"])
    assert files(mined)["qrels/train.tsv"].startswith(files(micro)["qrels/train.tsv"])


def test_mining_again_gives_the_same_files(run, micro, mined, tmp_path):
    out = str(tmp_path / "again")
    assert mine.main(["--run", run, "--data", micro, "--out", out, *WIDE]) == 0
    assert files(out) == files(mined)


def test_per_lang_takes_the_first_kept_and_zero_shot_adds_qe(run, micro, mined, tmp_path):
    out = str(tmp_path / "capped")
    assert mine.main(["--run", run, "--data", micro, "--out", out, "--per-lang", "2", "--zero-shot", *WIDE]) == 0
    capped, full = data.load(out), data.load(mined)
    added = sorted(q for q in capped.queries if q.startswith("mined-"))
    assert {capped.lang[q] for q in added} == {"qa", "qb", "qc", "qd", "qe"}
    assert all(capped.queries[q] == full.queries[q] for q in added if q in full.queries)
    assert all(sum(capped.lang[q] == x for q in added) <= 2 for x in ("qa", "qb", "qc", "qd", "qe"))


def test_a_query_text_in_the_unlabelled_text_is_never_mined(run, micro, mined, tmp_path):
    root, out = str(tmp_path / "d"), str(tmp_path / "d2")
    shutil.copytree(micro, root)
    dev = data.load(micro)
    q = next(q for q in dev.qrels["test"] if dev.lang[q] == "qa")
    for ext, line in (("txt", "  " + dev.queries[q].upper() + " "), ("pids", next(iter(dev.qrels["test"][q])))):
        with open(os.path.join(root, "unlabelled", f"qa.{ext}"), "a", encoding="utf-8") as f:
            f.write(line + "\n")
    assert mine.main(["--run", run, "--data", root, "--out", out, *WIDE]) == 0
    report = json.load(open(os.path.join(out, "mined.json")))["languages"]["qa"]
    before = json.load(open(os.path.join(mined, "mined.json")))["languages"]["qa"]
    assert report["skipped"]["a_query"] == before["skipped"]["a_query"] + 1 and report["tried"] == before["tried"]
    new = data.load(out)
    assert all(mine.norm(new.queries[x]) != mine.norm(dev.queries[q]) for x in new.queries if x.startswith("mined-"))


def test_errors_are_one_line_and_write_nothing(run, micro, tmp_path, capsys):
    no_de = str(tmp_path / "no_de")
    os.makedirs(no_de)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(run, name), no_de)
    bad_pids = str(tmp_path / "bad_pids")
    shutil.copytree(micro, bad_pids)
    with open(os.path.join(bad_pids, "unlabelled", "qa.pids"), "a") as f:
        f.write("p0\n")
    out = str(tmp_path / "out")
    os.makedirs(tmp_path / "exists")
    cases = [
        (["--run", str(tmp_path / "nope"), "--data", micro], f"error: {tmp_path / 'nope'}: not found (--run takes"),
        (["--run", no_de, "--data", micro], f"error: {os.path.join(no_de, 'de.pt')}: not found (train.py's stage de"),
        (["--run", run, "--data", micro, "--model", "qg.pt"], f"error: {os.path.join(run, 'qg.pt')}: not found"),
        (["--run", run, "--data", str(tmp_path / "nodata")], f"error: {tmp_path / 'nodata'}:0: not a directory"),
        (["--run", run, "--data", bad_pids], f"error: {os.path.join(bad_pids, 'unlabelled', 'qa.pids')}:0: 201 lines"),
        (["--run", run, "--data", micro, "--per-lang", "0"], "error: --per-lang 0: must be in [1, 2147483648)"),
        (["--run", run, "--data", micro, "--agree-k", "x"], "error: argument --agree-k: invalid int value: 'x'"),
        (["--run", run, "--data", micro, "--bogus"], "error: unrecognized arguments: --bogus"),
    ]
    for argv, start in cases:
        assert mine.main([*argv, "--out", out]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(start) and err.count("\n") == 1, (argv, err)
    assert mine.main(["--run", run, "--data", micro, "--out", str(tmp_path / "exists")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'exists'}: exists (--out names a new data set)\n"
    inside = os.path.join(micro, "mined")  # the walk over --data would copy the temp folder into itself
    assert mine.main(["--run", run, "--data", micro, "--out", inside]) == 1 and not os.path.exists(inside)
    assert capsys.readouterr().err.startswith(f"error: {inside}: inside the data set {micro}")
    assert sorted(os.listdir(tmp_path)) == ["bad_pids", "exists", "no_de"]  # no --out, no temp folder
