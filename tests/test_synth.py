"""synth.py: the unlabelled text never asks a dev or test question, in any language; stats.json records the splits.

The leak check does not trust synth's own bookkeeping: it reads the held-out facts back from the written files (the
positive passage's title names the entity, the pivot translation names the relation), renders every question
template of every held-out fact into every language with the renderers that wrote the files (so with their
lexicons), and looks for each rendering and each dev/test query text inside every unlabelled line: as a substring,
whitespace normalised, that does not begin or end inside a word (names can extend other names: Keze, Kezede).
"""
import itertools
import json
import os
import random
import subprocess
import sys

import pytest

import synth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANGS = [synth.PIVOT] + [lang.code for lang in synth.LANGS]


@pytest.fixture(scope="module", params=["micro", "tiny"])  # tiny takes about a second to write
def bench(request, tmp_path_factory):
    """(directory, renderers): the benchmark of seed 0 and the renderers generate() wrote it with."""
    out, made = str(tmp_path_factory.mktemp(request.param)), []

    class Recording(synth.Renderer):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "Renderer", Recording)
        synth.generate(out, request.param, seed=0)
    assert [r.lang.code for r in made] == LANGS[1:]
    return out, made


def norm(text):
    return " ".join(text.split())


def read_jsonl(out, name):
    with open(os.path.join(out, name), encoding="utf-8") as f:
        return {row["_id"]: row for row in map(json.loads, f)}


def read_qrels(out, split):
    with open(os.path.join(out, "qrels", f"{split}.tsv"), encoding="utf-8") as f:
        return [line.split("\t")[:2] for line in f.read().splitlines()[1:]]


def unlabelled_lines(out):
    """-> {language: [its unlabelled lines, whitespace normalised]}"""
    lines = {}
    for lang in LANGS:
        with open(os.path.join(out, "unlabelled", f"{lang}.txt"), encoding="utf-8") as f:
            lines[lang] = [norm(line) for line in f]
    return lines


def asked_facts(out, world, splits):
    """-> {query id: (entity, relation)} of the queries in `splits`, read back from the files."""
    title = {p["_id"]: p["title"] for p in read_jsonl(out, "corpus.jsonl").values()}
    entity = {synth.surface(name): e for e, name in world.names.items()}
    pivot, answers = read_jsonl(out, "translations.jsonl"), read_jsonl(out, "answers.jsonl")
    facts = {}
    for split in splits:
        for qid, pid in read_qrels(out, split):
            e = entity[title[pid]]
            rels = [r for r, _ in synth.TYPES[world.type[e]]
                    if pivot[qid]["text"] in [t.format(e=title[pid]) for t in synth.QUESTIONS[world.type[e], r]]]
            assert len(rels) == 1, (qid, rels)
            assert answers[qid]["answers"] == [synth.value_surface(world.facts[e, rels[0]])], qid
            facts[qid] = (e, rels[0])
    return facts


class Noise:
    """Stands in for synth's noise generator: drops no word, takes the picks[i]-th form at the i-th synonym choice."""

    def __init__(self, picks=()):
        self.picks, self.sizes = iter(picks), []

    def random(self):
        return 1.0  # >= every language's drop probability: the word stays

    def choice(self, forms):
        self.sizes.append(len(forms))
        return forms[next(self.picks, 0)]


def questions(fact, world, renderers):
    """Every question about `fact`: each template in the pivot, and rendered with each choice of synonyms."""
    e, rel = fact
    out = set()
    for template in synth.QUESTIONS[world.type[e], rel]:
        pivot = template.format(e=synth.surface(world.names[e]))
        out.add(pivot)
        for rend in renderers:
            probe = Noise()
            rend.render(pivot, probe)
            out |= {norm(rend.render(pivot, Noise(p))) for p in itertools.product(*map(range, probe.sizes))}
    return out


def joined(a, b):
    """Whether adjacent characters a, b lie inside one word: letters or digits in a spaced script; in CJK, where words
    are not spaced, two name characters (so a name is not found inside a longer name: 'who founded Keze' is not
    asked by 'who founded Kezede')."""
    if max(ord(a), ord(b)) >= synth.CJK_BASE:
        return all(synth.CJK_BASE <= ord(c) < synth.CJK_BASE + len(synth.SYLLABLES) for c in (a, b))
    return a.isalnum() and b.isalnum()


def occurs(needle, line):
    """Whether `needle` is a substring of `line` that starts and ends at word boundaries."""
    i = line.find(needle)
    while i >= 0:
        j = i + len(needle)
        if not (0 < i and joined(line[i - 1], line[i])) and not (j < len(line) and joined(line[j - 1], line[j])):
            return True
        i = line.find(needle, i + 1)
    return False


def containing(needles, lines, k=4):
    """The lines in which a needle occurs. Each line is indexed by its k-character pieces, and a needle is looked
    for only in the lines that hold its rarest piece (a line that contains the needle holds all its pieces)."""
    index = {}
    for i, line in enumerate(lines):
        for j in range(len(line) - k + 1):
            index.setdefault(line[j:j + k], set()).add(i)
    found = set()
    for n in needles:
        pieces = [index.get(n[j:j + k], ()) for j in range(len(n) - k + 1)]
        found |= {i for i in (min(pieces, key=len) if pieces else range(len(lines))) if occurs(n, lines[i])}
    return [lines[i] for i in sorted(found)]


def test_containing_matches_a_plain_search():
    name = synth._cjk
    assert occurs("who founded Keze", "who founded Keze ka") and occurs("Keze ka", "Keze ka")
    assert not occurs("who founded Keze", "who founded Kezede") and not occurs("Keze ka", "bo Kezeka ka")
    assert occurs(name(3) + "吗", name(3) + "吗") and occurs(name(3) + "吗", name(3) + "1900" + name(3) + "吗")
    word = name(150)  # a lexicon character: only names join in CJK
    assert not occurs(name(3) + "吗", name(2) + name(3) + "吗") and occurs(word + "吗", word + word + "吗")
    assert containing({"ab c", "x", "zzzzz"}, ["zab c", "q", "x y", "ab", "xy x"]) == ["x y", "xy x"]
    rng = random.Random(0)
    for _ in range(200):
        word = lambda n: "".join(rng.choice("ab 丁") for _ in range(rng.randrange(n)))
        needles, lines = {word(8) for _ in range(5)} - {""}, [word(30) for _ in range(20)]
        assert containing(needles, lines) == [line for line in lines if any(occurs(n, line) for n in needles)]


def test_unlabelled_text_asks_no_dev_or_test_question(bench):
    out, renderers = bench
    world, by_lang = renderers[0].world, unlabelled_lines(out)
    lines = [line for lang in LANGS for line in by_lang[lang]]
    held = asked_facts(out, world, ["dev", "test"])
    queries = read_jsonl(out, "queries.jsonl")
    needles = {norm(queries[q]["text"]) for q in held}
    for fact in set(held.values()):
        needles |= questions(fact, world, renderers)
    leaked = containing(needles, lines)
    assert not leaked, f"{len(leaked)} of {len(lines)} unlabelled lines ask a dev/test question, e.g. {leaked[0]!r}"
    # the check can see a question: unlabelled text does ask about training facts, in every query language
    train = list(asked_facts(out, world, ["train"]).values())[:100]
    needles = {n for fact in train for n in questions(fact, world, renderers)}
    for lang in LANGS[1:]:
        assert containing(needles, by_lang[lang]), lang


def test_stats_record_split_sizes(bench):
    out, _ = bench
    with open(os.path.join(out, "stats.json"), encoding="utf-8") as f:
        stats = json.load(f)
    lang = {q["_id"]: q["lang"] for q in read_jsonl(out, "queries.jsonl").values()}
    for split in ("train", "dev", "test"):
        counts = {code: 0 for code in LANGS[1:]}
        for qid, _ in read_qrels(out, split):
            counts[lang[qid]] += 1
        assert {code: d[split] for code, d in stats["languages"].items()} == counts, split
    assert stats["unlabelled"] == {lang: len(lines) for lang, lines in unlabelled_lines(out).items()}
    if stats["size"] == "tiny":  # enough dev queries per language to tell a difference of about 0.05
        assert all(d["dev"] >= 100 and d["test"] >= 100 for d in stats["languages"].values())


def test_deterministic_across_processes(bench, tmp_path):
    """A fresh process with another string-hash seed writes the same files as generate() did here."""
    out, _ = bench
    size = json.load(open(os.path.join(out, "stats.json")))["size"]
    code = f"import synth; synth.generate({str(tmp_path)!r}, {size!r}, 0)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONHASHSEED="123"),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ["corpus.jsonl", "queries.jsonl", "stats.json"] + [f"unlabelled/{lang}.{ext}" for lang in LANGS
                                                                    for ext in ("txt", "pids")]:
        assert open(os.path.join(out, name), "rb").read() == open(tmp_path / name, "rb").read(), name


def test_each_pivot_unlabelled_line_comes_from_its_recorded_passage(bench):
    """unlabelled/<lang>.pids names the passage that states the fact each line states or asks (mine.py's precision):
    a pivot line names that passage's entity (its title) and, where it states a year, the passage states that year."""
    out, _ = bench
    corpus = read_jsonl(out, "corpus.jsonl")
    lines = unlabelled_lines(out)[synth.PIVOT]
    with open(os.path.join(out, "unlabelled", f"{synth.PIVOT}.pids"), encoding="utf-8") as f:
        pids = f.read().split()
    counts = {lang: len(open(os.path.join(out, "unlabelled", f"{lang}.pids")).read().split()) for lang in LANGS}
    assert len(pids) == len(lines) and counts == {lang: len(x) for lang, x in unlabelled_lines(out).items()}
    years = 0
    for line, pid in zip(lines, pids):
        assert corpus[pid]["title"] in line, (line, pid)
        for year in [w for w in line.split() if w.isdigit() and len(w) == 4]:
            assert year in corpus[pid]["text"].split(), (line, pid)
            years += 1
    assert years > len(lines) / 10  # the year check did run
