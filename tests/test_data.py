"""data.py and synth.py: strict loading, every check error with its file and line, the tokenizer, the benchmark."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

import data
import synth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny"))
    synth.generate(out, "tiny", seed=0)
    return out


def write_set(root, corpus=None, queries=None, qrels=None):
    """A minimal valid data set; any of its three parts can be replaced by raw text."""
    os.makedirs(os.path.join(root, "qrels"), exist_ok=True)
    corpus = corpus if corpus is not None else (
        '{"_id": "d1", "title": "A", "text": "alpha beta"}\n{"_id": "d2", "title": "B", "text": "gamma"}\n')
    queries = queries if queries is not None else (
        '{"_id": "q1", "text": "alpha?", "lang": "xx"}\n{"_id": "q2", "text": "gamma?", "lang": "yy"}\n')
    qrels = qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n"
    for name, text in (("corpus.jsonl", corpus), ("queries.jsonl", queries), ("qrels/test.tsv", qrels)):
        with open(os.path.join(root, name), "w", encoding="utf-8") as f:
            f.write(text)
    return str(root)


def test_load_round_trip(tmp_path):
    d = data.load(write_set(tmp_path))
    assert d.pids == ["d1", "d2"] and d.titles == ["A", "B"] and d.texts == ["alpha beta", "gamma"]
    assert d.queries == {"q1": "alpha?", "q2": "gamma?"} and d.lang == {"q1": "xx", "q2": "yy"}
    assert d.qrels == {"test": {"q1": {"d1": 1}, "q2": {"d2": 2}}}
    assert d.languages() == ["xx", "yy"] and d.answers is None and d.unlabelled == {}
    assert d.passage_text(0) == "A alpha beta"


def test_load_synthetic_set(tiny):
    d = data.load(tiny)
    stats = json.load(open(os.path.join(tiny, "stats.json")))
    assert len(d.pids) == stats["passages"] and len(d.queries) == stats["queries"]
    assert set(d.answers) == set(d.queries) == set(d.translations)
    assert sorted(d.unlabelled) == ["en", "qa", "qb", "qc", "qd", "qe"]


BAD = [  # (file to break, its text, expected message after the path)
    ("corpus", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": oops}\n', "corpus.jsonl:2: invalid JSON"),
    ("corpus", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "title": "t"}\n', "corpus.jsonl:2: missing or non-string field 'text'"),
    ("corpus", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b", "title": 3}\n', "corpus.jsonl:2: missing or non-string field 'title'"),
    ("corpus", '{"_id": "d1", "text": "a"}\n\n{"_id": "d1", "text": "b"}\n', "corpus.jsonl:3: duplicate id 'd1'"),
    ("corpus", "", "corpus.jsonl:1: empty file"),
    ("corpus", '["d1", "a"]\n', "corpus.jsonl:1: expected a JSON object"),
    ("queries", '{"_id": "q1", "text": "a", "lang": "xx"}\n{"_id": "q2", "text": "b"}\n', "queries.jsonl:2: query 'q2' is judged but has no 'lang'"),
    ("qrels", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td1\t1\n", "qrels/test.tsv:3: unknown query id 'q9'"),
    ("qrels", "query-id\tcorpus-id\tscore\nq1\td7\t1\n", "qrels/test.tsv:2: unknown corpus id 'd7'"),
    ("qrels", "query-id\tcorpus-id\tscore\nq1\td1\t0.5\n", "qrels/test.tsv:2: score '0.5' is not an integer"),
    ("qrels", "query-id\tcorpus-id\tscore\nq1 d1 1\n", "qrels/test.tsv:2: expected 3 tab-separated fields, got 1"),
    ("qrels", "q1\td1\t1\n", "qrels/test.tsv:1: expected the header"),
    ("qrels", "query-id\tcorpus-id\tscore\n", "qrels/test.tsv:2: no judgements after the header"),
    ("qrels", "", "qrels/test.tsv:1: empty file"),
    ("qrels", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq1\td1\t0\n",
     "qrels/test.tsv:4: ('q1', 'd1') is judged twice (first at line 2)"),
    # JSON's \ud800 escape is valid JSON but not valid Unicode: the tokenizer would crash on it during training
    ("corpus", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b\\ud800c"}\n',
     "corpus.jsonl:2: field 'text' is not valid Unicode (a lone surrogate '\\ud800' at character 1)"),
    ("corpus", '{"_id": "d1", "title": "\\udc00", "text": "a"}\n{"_id": "d2", "text": "b"}\n',
     "corpus.jsonl:1: field 'title' is not valid Unicode (a lone surrogate '\\udc00' at character 0)"),
    ("queries", '{"_id": "q1", "text": "a", "lang": "xx"}\n{"_id": "q2", "text": "x\\ud83d", "lang": "yy"}\n',
     "queries.jsonl:2: field 'text' is not valid Unicode (a lone surrogate '\\ud83d' at character 1)"),
    ("queries", '{"_id": "q1", "text": "a", "lang": "xx"}\n{"_id": "q\\udfff", "text": "b", "lang": "yy"}\n',
     "queries.jsonl:2: field '_id' is not valid Unicode (a lone surrogate '\\udfff' at character 1)"),
]


@pytest.mark.parametrize("part,text,message", BAD)
def test_check_errors_name_file_and_line(tmp_path, part, text, message):
    root = write_set(tmp_path, **{part: text})
    with pytest.raises(data.DataError) as e:
        data.load(root)
    assert str(e.value).startswith(os.path.join(root, message)), str(e.value)


def test_bad_utf8_and_unknown_extra_ids(tmp_path):
    root = write_set(tmp_path)
    with open(os.path.join(root, "answers.jsonl"), "w") as f:
        f.write('{"_id": "q1", "answers": ["x"]}\n{"_id": "q5", "answers": ["y"]}\n')
    with pytest.raises(data.DataError, match=r"answers.jsonl:2: unknown query id 'q5'"):
        data.load(root)
    with open(os.path.join(root, "answers.jsonl"), "w") as f:
        f.write('{"_id": "q1", "answers": "x"}\n')
    with pytest.raises(data.DataError, match=r"answers.jsonl:1: field 'answers' must be a list of strings"):
        data.load(root)
    os.remove(os.path.join(root, "answers.jsonl"))
    with open(os.path.join(root, "queries.jsonl"), "ab") as f:
        f.write(b'{"_id": "q3", "text": "\xff"}\n')
    with pytest.raises(data.DataError, match=r"queries.jsonl:3: not valid UTF-8"):
        data.load(root)


def test_check_cli_one_line_error_and_summary(tmp_path, tiny):
    root = write_set(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    r = subprocess.run([sys.executable, "data.py", "check", root], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"error: {root}/qrels/test.tsv:2: unknown corpus id 'd9'"]
    r = subprocess.run([sys.executable, "data.py", "check", tiny], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "2815 passages" in r.stdout and "languages: qa qb qc qd qe" in r.stdout


def test_synth_is_deterministic(tmp_path, tiny):
    synth.generate(str(tmp_path / "again"), "tiny", seed=0)
    synth.generate(str(tmp_path / "other"), "tiny", seed=1)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "unlabelled/qd.txt", "stats.json"):
        same = open(os.path.join(tiny, name), "rb").read()
        assert open(tmp_path / "again" / name, "rb").read() == same, name
        assert open(tmp_path / "other" / name, "rb").read() != same, name


def test_synth_language_properties(tiny):
    d = data.load(tiny)
    stats = json.load(open(os.path.join(tiny, "stats.json")))["languages"]
    train = {lang: sum(d.lang[q] == lang for q in d.qrels["train"]) for lang in d.languages()}
    largest = max(train.values())
    assert sum(n == largest for n in train.values()) >= 2                     # two high-resource languages
    assert sum(0 < n <= largest / 10 for n in train.values()) >= 2           # two low-resource ones
    assert sum(n == 0 for n in train.values()) >= 1                           # a zero-shot one
    for split in ("dev", "test"):
        assert {d.lang[q] for q in d.qrels[split]} == set(d.languages())
    # one relevant passage per query; no fact asked twice (no parallel queries); splits disjoint
    assert all(len(rel) == 1 for split in d.qrels.values() for rel in split.values())
    asked = [d.translations[q] for split in d.qrels.values() for q in split]
    positives = [next(iter(rel)) + d.translations[q] for split in d.qrels.values() for q, rel in split.items()]
    assert len(set(positives)) == len(positives) and len(asked) == len(d.queries)
    # the positive names the asked entity; its other passages share the title (hard negatives)
    titles = {}
    for pid, title in zip(d.pids, d.titles):
        titles.setdefault(title, []).append(pid)
    row = {p: i for i, p in enumerate(d.pids)}
    for q, rel in list(d.qrels["test"].items())[:50]:
        pid = next(iter(rel))
        assert d.titles[row[pid]] in d.translations[q] and len(titles[d.titles[row[pid]]]) >= 2
    # lexical overlap: Latin-script languages partly share words with their positive, the others never share a
    # subword with any passage
    assert stats["qa"]["shares_word"] > 0.5 and 0.05 < stats["qc"]["shares_word"] < 0.5
    tok = data.train_tokenizer(data.tokenizer_texts(d), d.languages(), vocab_size=4000)
    passage_ids = {i for e in tok.encode_batch([d.passage_text(i) for i in range(len(d.pids))]) for i in e.ids}
    for lang, script in (("qd", "cyrillic"), ("qe", "cjk")):
        assert stats[lang]["script"] == script and stats[lang]["shares_word"] == 0
        qs = [d.queries[q] for q in d.lang if d.lang[q] == lang]
        ids = {i for e in tok.encode_batch(qs) for i in e.ids} - {data.UNK}
        assert ids and not ids & passage_ids, lang
    assert all(" " not in d.queries[q] for q in d.lang if d.lang[q] == "qe")  # CJK: no spaces between words


def test_tokenizer_specials_tags_and_determinism(tiny, tmp_path):
    d = data.load(tiny)
    langs = d.languages() + list(d.unlabelled)
    a = data.train_tokenizer(data.tokenizer_texts(d), langs, vocab_size=3000)
    b = data.train_tokenizer(data.tokenizer_texts(d), langs, vocab_size=3000)
    assert a.to_str() == b.to_str()
    assert [a.id_to_token(i) for i in range(len(data.SPECIALS))] == data.SPECIALS
    assert [a.token_to_id(data.lang_tag(x)) for x in ["en", "qa", "qb", "qc", "qd", "qe"]] == list(range(9, 15))
    a.save(str(tmp_path / "tokenizer.json"))
    c = data.load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert c.encode("Dolo Ginegi was born").ids == a.encode("Dolo Ginegi was born").ids
    # scripts without spaces are split into characters, not one [UNK] per sentence
    assert a.encode("专丰丅乄").tokens == ["专", "丰", "丅", "乄"]
    ids = data.encode(a, ["dolo ginegi was born in 1939"], max_len=4, prefix=[data.Q])
    assert ids[0][0] == data.Q and len(ids[0]) == 4


def test_show_prints_every_language(tiny):
    r = subprocess.run([sys.executable, "data.py", "show", tiny, "--n", "2"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0
    for lang in ["qa", "qb", "qc", "qd", "qe"]:
        assert f"== {lang} (test)" in r.stdout
    assert r.stdout.count("hard neg") == 10


def slow_wordpieces(counts, size):
    """The obvious BPE: recount every pair after every merge."""
    words = {w: [w[0]] + ["##" + c for c in w[1:]] for w in counts}
    pieces = sorted({s for w in words.values() for s in w})
    while len(pieces) < size:
        pairs = {}
        for w, syms in words.items():
            for pair in zip(syms, syms[1:]):
                pairs[pair] = pairs.get(pair, 0) + counts[w]
        if not pairs or max(pairs.values()) < 2:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        new = best[0] + best[1][2:]
        pieces.append(new)
        for w, syms in words.items():
            out, j = [], 0
            while j < len(syms):
                if tuple(syms[j:j + 2]) == best:
                    out.append(new)
                    j += 2
                else:
                    out.append(syms[j])
                    j += 1
            words[w] = out
    return pieces


def test_learn_wordpieces_equals_slow_reference():
    import random
    from collections import Counter
    rng = random.Random(0)
    for trial in range(5):
        counts = Counter("".join(rng.choice("abcaab") for _ in range(rng.randint(1, 7))) for _ in range(300))
        for size in (5, 12, 40):
            assert data.learn_wordpieces(counts, size) == slow_wordpieces(counts, size)
    # hand-worked: 'ab' x2, 'abc' x1 -> (a,##b) occurs 3 times and is merged; (ab,##c) occurs once: stop
    assert data.learn_wordpieces(Counter({"ab": 2, "abc": 1}), 10) == ["##b", "##c", "a", "ab"]
    # a tie between (a,##a) and (##a,##a), 3 each, goes to the smaller pair in string order ('#' < 'a')
    assert data.learn_wordpieces(Counter({"aaa": 3}), 3) == ["##a", "a", "##aa"]


# ---- noise for pre-training -----------------------------------------------------------------------------------------

def refill(src, tgt):
    """Put each target span back at its [MASK] in src: the slow obvious inverse of span_corrupt."""
    spans, cur = [], None
    for t in tgt:
        if t == data.MASK:
            cur = []
            spans.append(cur)
        else:
            cur.append(t)
    out, it = [], iter(spans)
    for t in src:
        out += next(it) if t == data.MASK else [t]
    return out


@pytest.mark.parametrize("n", [0, 1, 2, 7, 40])
def test_span_corrupt_is_invertible_and_drops_about_noise(n):
    g = torch.Generator().manual_seed(n)
    tokens = list(range(100, 100 + n))
    dropped = 0
    for _ in range(50):
        src, tgt = data.span_corrupt(tokens, 0.3, g)
        assert refill(src, tgt) == tokens
        assert src.count(data.MASK) == tgt.count(data.MASK) and (n == 0 or tgt[0] == data.MASK)
        dropped += len(tgt) - tgt.count(data.MASK)
    if n == 40:  # spans of 3 at 4 random starts (overlaps drop fewer): between 10 % and 30 % of the tokens
        assert 0.1 < dropped / (50 * n) <= 0.3


def test_mlm_mask_rates_and_specials():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(data.SPECIALS), 500, (64, 50))
    mask = torch.arange(50)[None, :] < torch.randint(10, 51, (64, 1))                  # ragged rows
    ids[~mask] = data.PAD
    x, picked = data.mlm_mask(ids, mask, 0.15, 500, g)
    assert not picked[:, 0].any() and not (picked & ~mask).any()                       # never the marker or padding
    assert torch.equal(x[~picked], ids[~picked])                                        # only picked tokens change
    share = picked.sum() / mask[:, 1:].sum()
    assert 0.12 < share < 0.18
    masked = (x[picked] == data.MASK).float().mean()
    assert 0.72 < masked < 0.88
    assert (x[picked & (x != data.MASK)] >= len(data.SPECIALS)).all()                 # random tokens are not specials


def test_query_judged_in_two_splits(tmp_path):
    root = write_set(tmp_path)
    with open(os.path.join(root, "qrels", "train.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\nq2\td2\t1\nq1\td1\t1\n")
    with pytest.raises(data.DataError) as e:
        data.load(root)
    assert str(e.value) == os.path.join(root, "qrels", "test.tsv") + ":2: query 'q1' is also judged in train.tsv"


def test_lone_surrogates_in_optional_files(tmp_path):
    """answers, translations and unlabelled text are read as text too; a surrogate pair escape is valid."""
    root = write_set(tmp_path, queries='{"_id": "q1", "text": "\\ud83d\\ude00 alpha?", "lang": "xx"}\n'
                                       '{"_id": "q2", "text": "gamma?", "lang": "yy"}\n')
    assert data.load(root).queries["q1"] == "\U0001F600 alpha?"
    cases = [("answers.jsonl", '{"_id": "q1", "answers": ["ok", "b\\ud800"]}\n',
              "answers.jsonl:1: field 'answers' is not valid Unicode (a lone surrogate '\\ud800' at character 1)"),
             ("translations.jsonl", '{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "\\udbff"}\n',
              "translations.jsonl:2: field 'text' is not valid Unicode (a lone surrogate '\\udbff' at character 0)")]
    for name, text, message in cases:
        with open(os.path.join(root, name), "w", encoding="utf-8") as f:
            f.write(text)
        with pytest.raises(data.DataError) as e:
            data.load(root)
        assert str(e.value) == os.path.join(root, message)
        os.remove(os.path.join(root, name))
    os.makedirs(os.path.join(root, "unlabelled"))
    with open(os.path.join(root, "unlabelled", "xx.txt"), "wb") as f:  # a surrogate encoded as bytes: not UTF-8
        f.write("ok\n".encode() + b"a \xed\xa0\x80 b\n")
    with pytest.raises(data.DataError) as e:
        data.load(root)
    assert str(e.value).startswith(os.path.join(root, "unlabelled", "xx.txt:2: not valid UTF-8"))


def test_check_cli_rejects_lone_surrogate_and_repeated_judgement(tmp_path):
    root = write_set(tmp_path, queries='{"_id": "q1", "text": "\\ud800", "lang": "xx"}\n'
                                       '{"_id": "q2", "text": "gamma?", "lang": "yy"}\n')
    r = subprocess.run([sys.executable, "data.py", "check", root], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [f"error: {root}/queries.jsonl:1: field 'text' is not valid Unicode "
                                     f"(a lone surrogate '\\ud800' at character 0)"]
    root = write_set(tmp_path / "b", qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n")
    r = subprocess.run([sys.executable, "data.py", "check", root], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [f"error: {root}/qrels/test.tsv:3: ('q1', 'd1') is judged twice (first at line 2)"]


def test_vocabulary_sized_to_the_text():
    """vocab_size 0: a quarter of the distinct words, at least 4,000 (a small text gets the fixed-size file), at most
    32,000."""
    small = ["the cat sat", "a dog ran far"]
    assert data.train_tokenizer(small, ["en"], 0).to_str() == data.train_tokenizer(small, ["en"], 4000).to_str()
    rng = random.Random(0)
    words = {"".join(rng.choice("abcdefghij") for _ in range(7)) for _ in range(20_000)}   # ~19,990 distinct
    tok = data.train_tokenizer([" ".join(sorted(words))], ["en"], 0)
    assert tok.get_vocab_size() == len(words) // 4
