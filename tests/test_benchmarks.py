"""benchmarks.py, mrtydi.py: XOR-Retrieve, MKQA and Mr. TyDi / MIRACL importers on small invented files written in each
benchmark's published format (field names from their documentation), the heuristic qrels by DPR's has_answer
worked by hand, the passage subset, and one-line `file:line` errors that leave nothing behind."""
import gzip
import json
import os
import random

import pytest

import benchmarks as B
import data
import mrtydi as M
from data import DataError

PASSAGES = [  # id, text, title: DPR's tsv quotes the text, doubling inner quotes
    ("1", "Tokyo is the capital of Japan. Its population is about 14 million.", "Tokyo"),
    ("2", "Mount Fuji (富士山) is 3,776 m high; it is the highest mountain in Japan.", "Mount Fuji"),
    ("3", "The Beatles were an English rock band formed in Liverpool.", "The Beatles"),
    ("4", "Paris is the capital of France, on the Seine.", "Paris"),
    ("5", 'Café culture: a "quoted" word in Paris.', "Café"),
    ("6", "Unrelated text about rivers.", "River"),
]
TRAIN = [{"id": "t1", "question": "日本の首都は？", "lang": "ja", "answers": ["Tokyo"]},
         {"id": "t2", "question": "Где образовалась группа?", "lang": "ru", "answers": ["Liverpool"]},
         {"id": "t3", "question": "Onko Tokio pääkaupunki?", "lang": "fi", "answers": ["yes"]},  # no span answer
         {"id": "t4", "question": "수도는?", "lang": "ko", "answers": ["capital", "no"]},
         {"id": "t5", "question": "カフェ？", "lang": "ja", "answers": ["Café"]}]
DEV = [{"id": "d1", "question": "富士山の高さは？", "lang": "ja", "answers": ["3,776 m"]},
       {"id": "d2", "question": "Mikä joki?", "lang": "fi", "answers": ["Seine", "cafe"]},  # 'cafe' != NFD café
       {"id": "d3", "question": "아틀란티스?", "lang": "ko", "answers": ["Atlantis"]}]        # in no passage


def write(path, text, gz=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with (gzip.open(path, "wt", encoding="utf-8") if gz else open(path, "w", encoding="utf-8")) as f:
        f.write(text)
    return path


def tsv(rows):
    return "id\ttext\ttitle\n" + "".join(f'{i}\t"{t.replace(chr(34), chr(34) * 2)}"\t{h}\n' for i, t, h in rows)


def jsonl(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def read(out, name):
    with open(os.path.join(out, name), encoding="utf-8") as f:
        return f.read()


@pytest.fixture
def xor(tmp_path):
    d = str(tmp_path)
    return dict(passages=write(f"{d}/psgs_w100.tsv", tsv(PASSAGES)), train=write(f"{d}/train.jsonl", jsonl(TRAIN)),
                test=write(f"{d}/dev.jsonl", jsonl(DEV)), dir=d)


def test_xor_retrieve_by_hand(xor):
    out = os.path.join(xor["dir"], "out")
    stats = B.xor_retrieve(out, xor["passages"], xor["train"], test=xor["test"])
    # has_answer (lower case, NFD, token runs): t1 Tokyo -> 1; t2 Liverpool -> 3; t4 capital -> 1 and 4;
    # t5 Café -> 5 (its NFD form); d1 '3 , 776 m' -> 2; d2 Seine -> 4 ('cafe' is not 'cafe' + U+0301); d3 none
    assert read(out, "qrels/train.tsv") == "query-id\tcorpus-id\tscore\nt1\t1\t1\nt2\t3\t1\nt4\t1\t1\nt4\t4\t1\nt5\t5\t1\n"
    assert read(out, "qrels/test.tsv") == "query-id\tcorpus-id\tscore\nd1\t2\t1\nd2\t4\t1\n"
    assert not os.path.exists(os.path.join(out, "qrels", "dev.tsv"))
    ds = data.load(out)
    assert ds.pids == ["1", "2", "3", "4", "5", "6"] and ds.titles[4] == "Café"
    assert ds.texts[4] == 'Café culture: a "quoted" word in Paris.'  # the tsv's quoting undone
    assert ds.answers["t4"] == ["capital"] and ds.answers["d2"] == ["Seine", "cafe"] and "t3" not in ds.queries
    assert ds.lang["d3"] == "ko" and "d3" not in ds.qrels["test"]
    assert stats["unmatched"]["test"] == {"ko": 1} and stats["dropped_no_span_answer"] == {"train": 1}
    assert stats["queries"]["train"] == {"ja": 2, "ru": 1, "ko": 1} and stats["passages"] == 6
    assert json.loads(read(out, "stats.json"))["relevance"].startswith("heuristic")


def test_xor_subset_positives_and_hold_out(xor):
    d = xor["dir"]
    B.xor_retrieve(f"{d}/one", xor["passages"], xor["train"], test=xor["test"], max_positives=1)
    t4 = [line for line in read(f"{d}/one", "qrels/train.tsv").splitlines() if line.startswith("t4")]
    assert len(t4) == 1 and t4[0].split("\t")[1] in ("1", "4")
    for seed in range(4):  # the positives 1-5, plus the passage with the smallest seeded key (one per row, in order)
        stats = B.xor_retrieve(f"{d}/sub{seed}", xor["passages"], xor["train"], test=xor["test"], keep=1, seed=seed)
        rng = random.Random(seed)
        keys = [rng.random() for _ in PASSAGES]
        want = sorted({"1", "2", "3", "4", "5", str(1 + keys.index(min(keys)))})
        assert data.load(f"{d}/sub{seed}").pids == want and stats["passages"] == len(want)
    stats = B.xor_retrieve(f"{d}/ho", xor["passages"], xor["train"], hold_out=2, seed=0)
    assert sum(stats["queries"]["dev"].values()) == 2 and sum(stats["queries"]["train"].values()) == 2
    with pytest.raises(DataError, match="--hold-out 4: the training file has only 4 queries"):
        B.xor_retrieve(f"{d}/x", xor["passages"], xor["train"], hold_out=4)


@pytest.mark.parametrize("name, text, message", [
    ("psgs_w100.tsv", "id\ttitle\ttext\n1\tx\ty\n", ":1: expected the header 'id<TAB>text<TAB>title'"),
    ("psgs_w100.tsv", tsv(PASSAGES[:1]) + "2\tonly two\n", ":3: expected 3 tab-separated fields (id, text, title), got 2"),
    ("psgs_w100.tsv", tsv(PASSAGES[:2]) + '1\t"again"\tTokyo\n', ":4: duplicate passage id '1' (first as passage 1)"),
    ("train.jsonl", jsonl(TRAIN[:1]) + "{not json\n", ":2: invalid JSON"),
    ("train.jsonl", jsonl([{"id": "t1", "lang": "ja", "answers": ["x"]}]), ":1: missing or invalid field 'question'"),
    ("train.jsonl", jsonl([dict(TRAIN[0], answers="Tokyo")]), ":1: missing or invalid field 'answers' (expected a list)"),
    ("train.jsonl", jsonl([dict(TRAIN[0], answers=[1])]), ":1: field 'answers' must be a list of strings"),
    ("train.jsonl", jsonl(TRAIN[:1] * 2), ":2: duplicate id 't1'"),
    ("dev.jsonl", jsonl([{"id": "q", "question": "?", "lang": "ja"}]), ":1: no 'answers' (a questions-only file"),
])
def test_xor_errors_name_the_line_and_leave_nothing(xor, name, text, message):
    path = write(os.path.join(xor["dir"], name), text)
    out = os.path.join(xor["dir"], "out")
    with pytest.raises(DataError) as e:
        B.xor_retrieve(out, xor["passages"], xor["train"], test=xor["test"])
    assert str(e.value).startswith(path + message), str(e.value)
    assert not os.path.exists(out) and not [n for n in os.listdir(xor["dir"]) if ".tmp" in n]


def test_cli_one_line_error_and_success(xor, capsys):
    out = os.path.join(xor["dir"], "out")
    write(xor["test"], jsonl(DEV) + '{"id": "d9"}\n')
    assert data.main(["import", "xor-retrieve", "--train", xor["train"], "--test", xor["test"], "--passages",
                      xor["passages"], "--out", out]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {xor['test']}:4: missing or invalid field 'question' (expected a non-empty string)\n"
    write(xor["test"], jsonl(DEV))
    assert data.main(["import", "xor-retrieve", "--train", xor["train"], "--test", xor["test"], "--passages",
                      xor["passages"], "--out", out, "--keep-passages", "0"]) == 0
    assert capsys.readouterr().out == f"wrote {out}: 5 passages; see {out}/stats.json\n"
    assert data.main(["import", "mkqa", "--passages", xor["passages"], "--out", out + "2"]) == 1
    assert capsys.readouterr().err == "error: mkqa: --mkqa and --langs are required\n"


MKQA = [
    {"example_id": 101, "query": "capital of japan", "queries": {"en": "capital of japan", "ja": "日本の首都", "fi": "Japanin pääkaupunki"},
     "answers": {"en": [{"type": "entity", "entity": "Q1490", "text": "Tokyo", "aliases": ["Tokyo Metropolis"]}],
                 "ja": [{"type": "entity", "entity": "Q1490", "text": "東京", "aliases": []}]}},
    {"example_id": 102, "query": "q", "queries": {"en": "q", "ja": "問", "fi": "k"},
     "answers": {"en": [{"type": "unanswerable", "text": None}]}},
    {"example_id": 103, "query": "is it", "queries": {"en": "is it", "ja": "か", "fi": "onko"},
     "answers": {"en": [{"type": "binary", "text": "yes"}]}},
    {"example_id": -104, "query": "how high is fuji", "queries": {"en": "how high", "ja": "富士山の高さ", "fi": "korkeus"},
     "answers": {"en": [{"type": "number_with_unit", "text": "3,776 m", "aliases": ["3776 m"]},
                        {"type": "long_answer", "text": None}]}},
]


def test_mkqa_by_hand(xor):
    d = xor["dir"]
    path = write(f"{d}/mkqa.jsonl.gz", jsonl(MKQA), gz=True)
    stats = B.mkqa(f"{d}/mk", xor["passages"], path, ["ja", "fi"], train=xor["train"], hold_out=1)
    ds = data.load(f"{d}/mk")
    assert ds.qrels["test"] == {"ja:101": {"1": 1}, "fi:101": {"1": 1}, "ja:-104": {"2": 1}, "fi:-104": {"2": 1}}
    assert ds.answers["fi:101"] == ["Tokyo", "Tokyo Metropolis"] and ds.answers["ja:-104"] == ["3,776 m", "3776 m"]
    assert ds.queries["ja:-104"] == "富士山の高さ" and ds.lang["fi:101"] == "fi"
    assert stats["dropped_no_span_answer"]["test"] == 4 and sum(stats["queries"]["dev"].values()) == 1
    bad = dict(MKQA[0], queries={"ja": "x"})
    path = write(f"{d}/bad.jsonl.gz", jsonl([MKQA[1], bad]), gz=True)
    with pytest.raises(DataError, match=r"bad.jsonl.gz:2: no query in 'fi'"):
        B.mkqa(f"{d}/bad", xor["passages"], path, ["ja", "fi"])
    path = write(f"{d}/bad2.jsonl", jsonl([dict(MKQA[0], answers={"en": [{"type": "entity", "text": None}]})]))
    with pytest.raises(DataError, match=r"bad2.jsonl:1: a 'entity' answer needs a string 'text'"):
        B.mkqa(f"{d}/bad2", xor["passages"], path, ["ja"])


def mrtydi_dir(root):
    write(f"{root}/topic.train.tsv", "1\t東京はどこ\n2\t富士山\n")
    write(f"{root}/qrels.train.txt", "1 Q0 10#0 1\n2 Q0 11#1 1\n")
    write(f"{root}/topic.test.tsv", "7\tビートルズ\n")
    write(f"{root}/qrels.test.txt", "7 Q0 12#0 1\n")
    write(f"{root}/topic.tsv", "ignored\tall topics\n")  # the whole set, not a split
    docs = [{"id": f"{10 + k}#{k % 2}", "contents": f"passage {k}"} for k in range(6)]
    write(f"{root}/collection/docs.jsonl.gz", jsonl(docs), gz=True)
    return root


def test_mrtydi_and_miracl(tmp_path):
    src = mrtydi_dir(str(tmp_path / "mrtydi-v1.1-japanese"))
    stats = M.mrtydi(str(tmp_path / "a"), src, "ja")
    ds = data.load(str(tmp_path / "a"))
    assert ds.qrels == {"train": {"1": {"10#0": 1}, "2": {"11#1": 1}}, "test": {"7": {"12#0": 1}}}
    assert len(ds.pids) == 6 and ds.texts[0] == "passage 0" and ds.lang["7"] == "ja" and stats["passages"] == 6
    M.mrtydi(str(tmp_path / "b"), src, "ja", keep=1, seed=0)
    pids = data.load(str(tmp_path / "b")).pids
    assert len(pids) == 4 and {"10#0", "11#1", "12#0"} <= set(pids)
    m = str(tmp_path / "miracl-v1.0-ja")  # MIRACL: topics/ and qrels/ folders, tab-separated qrels with 0s
    write(f"{m}/topics/topics.miracl-v1.0-ja-dev.tsv", "31\t質問\n")
    write(f"{m}/topics/topics.miracl-v1.0-ja-test-a.tsv", "90\thidden\n")  # no qrels: not a split
    write(f"{m}/qrels/qrels.miracl-v1.0-ja-dev.tsv", "31\tQ0\t5#0\t1\n31\tQ0\t5#1\t0\n")
    corpus = [{"docid": "5#0", "title": "題", "text": "本文"}, {"docid": "5#1", "title": "題", "text": "別"}]
    write(f"{tmp_path}/miracl-corpus-v1.0-ja/docs-0.jsonl.gz", jsonl(corpus), gz=True)
    M.mrtydi(str(tmp_path / "c"), m, "ja", [str(tmp_path / "miracl-corpus-v1.0-ja")])
    ds = data.load(str(tmp_path / "c"))
    assert ds.qrels == {"dev": {"31": {"5#0": 1, "5#1": 0}}} and ds.titles == ["題", "題"] and "90" not in ds.queries


@pytest.mark.parametrize("name, text, message", [
    ("qrels.train.txt", "1 Q0 10#0\n", ":1: expected 'qid Q0 docid relevance' with an integer relevance"),
    ("qrels.train.txt", "1 Q0 10#0 1\n5 Q0 11#1 1\n", ":2: query '5' is not in topic.train.tsv"),
    ("qrels.train.txt", "1 Q0 10#0 1\n1 0 10#0 1\n", ":2: ('1', '10#0') is judged twice (first at line 1)"),
    ("qrels.train.txt", "1 Q0 99#9 1\n", ":1: passage '99#9' is not in the corpus (1 judged passages missing)"),
    ("topic.train.tsv", "1\tq\n2\n", ":2: expected 'qid<TAB>query'"),
    ("topic.test.tsv", "1\tagain\n", ":1: query id '1' also at"),
])
def test_mrtydi_errors(tmp_path, name, text, message):
    src = mrtydi_dir(str(tmp_path / "src"))
    path = write(f"{src}/{name}", text)
    with pytest.raises(DataError) as e:
        M.mrtydi(str(tmp_path / "out"), src, "ja")
    assert str(e.value).startswith(path + message), str(e.value)
    assert not os.path.exists(tmp_path / "out")


def test_has_answer_tokens_and_index():
    assert B.dpr_tokens("Mount Fuji: 3,776 m!") == ["mount", "fuji", ":", "3", ",", "776", "m", "!"]
    assert B.dpr_tokens("Café") == ["cafe\u0301"] and B.dpr_tokens("東京都\u200b") == ["東京都"]  # a mark; Cf dropped
    idx = B.AnswerIndex(["New York", "York", "new", "!!"])
    words = B.dpr_tokens("A new road to York, not New-York City.")
    assert sorted(idx.answers[k] for k in idx.found_in(words)) == [("new",), ("york",)]  # 'new - york' is no run
    assert sorted(idx.answers[k] for k in idx.found_in(B.dpr_tokens("in New York!!"))) == \
        [("!", "!"), ("new",), ("new", "york"), ("york",)]
