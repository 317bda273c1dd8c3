"""Importers for the paper's answer benchmarks, XOR-Retrieve and MKQA: published files -> the BEIR layout of data.py.

    python data.py import xor-retrieve --train xor_train_retrieve_eng_span.jsonl \\
        --test xor_dev_retrieve_eng_span_v1_1.jsonl --hold-out 1000 --passages psgs_w100.tsv --out data/xor
    python data.py import mkqa --mkqa mkqa.jsonl.gz --langs ar,fi,ja,ko,ru,es,sv,he,th,da,de,fr,it,nl,pl,pt,hu,vi,\\
        ms,km,no,tr,zh_cn,zh_hk,zh_tw --train xor_train_retrieve_eng_span.jsonl --hold-out 1000 \\
        --passages psgs_w100.tsv --out data/mkqa
Add `--keep-passages N` for a CPU-sized corpus (see below). Every error is one line `file:line: problem`.

XOR-Retrieve (XOR-TyDi QA, AkariAsai/XORQA): question files, JSON lines {"id", "question", "lang", "answers": [str]}
(the test file has no answers), and DPR's English Wikipedia passages `psgs_w100.tsv` (header `id<TAB>text<TAB>title`,
fields quoted as a spreadsheet writes them; 21M passages, 13 GB, read line by line, never held in memory). Each file
goes to the split named by its flag; papers report XOR-Retrieve on the published dev file, so pass it as --test and
draw a dev split for model selection from the training file with --hold-out N (seeded). Answers "yes" and "no" are
dropped, as the official evaluation skips them; a query left without an answer is dropped (stats.json counts them).
MKQA (apple/ml-mkqa): `mkqa.jsonl(.gz)`, one example a line, {"example_id", "queries": {lang: text}, "answers":
{lang: [{"type", "text", "aliases"}]}}. Each language of --langs gives a test query `<lang>:<example_id>`; its
answers are the --answer-lang (default en: the passages are English Wikipedia) answers' text and aliases, except
types unanswerable and long_answer (no text) and binary (yes/no). Training queries come from XOR-Retrieve (--train),
as in the paper: the model trained on XOR-Retrieve is tested on MKQA.

Relevance. Neither benchmark judges passages: its metric, R@2kt / R@5kt (evaluate.py), looks for the answer strings
in the retrieved text. The qrels written here are a heuristic, for training and for recall@k / nDCG (only indicative
here; R@kt is the benchmark's number): a passage is relevant to a query if its text holds one of the query's answers
by DPR's `has_answer` rule (dpr/data/qa_validation.py in facebookresearch/DPR: NFD, lower case, answer tokens found
as a run of the passage's tokens, tokens being runs of letters/digits/marks or single other characters). At most
--max-positives such passages a query are kept (those with the smallest seeded random keys, drawn in file order).
A query with no such passage has no judgement and is therefore not evaluated (stats.json: `unmatched`); the
official script would score it (almost always 0).
--keep-passages N keeps N passages drawn at random (seeded) plus every kept positive, in file order: THIS CHANGES
THE NUMBERS (a smaller corpus is easier; R@kt on it is not comparable with published results); without it the whole
file is the corpus. `Corpus` (that seeded sample, kept while the passages stream by) also serves mrtydi.py.
"""
import csv
import heapq
import json
import os
import random
import re
import sys
import unicodedata
from collections import Counter

from data import SPLITS, DataError
from readers import check_out, field, json_lines, qrels_text, rows_text, write_dataset

MAX_POSITIVES = 10


# ----------------------------------------------------------------------------- questions

def span_answers(answers):
    """The answers the official R@kt uses: not "yes" or "no", not empty; order kept, duplicates removed."""
    return list(dict.fromkeys(a for a in answers if a not in ("yes", "no") and a.strip()))


def xor_questions(path, split, stats):
    """-> [query dict(qid, lang, text, answers, split, line)] of an XOR-TyDi question file."""
    out, seen = [], set()
    for i, row in json_lines(path):
        qid, text, lang = (field(row, k, path, i) for k in ("id", "question", "lang"))
        if "answers" not in row:
            raise DataError(f"{path}:{i}: no 'answers' (a questions-only file cannot be trained or evaluated on)")
        answers = field(row, "answers", path, i, list)
        if qid in seen:
            raise DataError(f"{path}:{i}: duplicate id {qid!r}")
        seen.add(qid)
        kept = span_answers(answers)
        if not kept:
            stats["dropped_no_span_answer"][split] += 1
            continue
        out.append(dict(qid=qid, lang=lang, text=text, answers=kept, split=split, where=f"{path}:{i}"))
    return out


def mkqa_questions(path, langs, answer_lang, stats):
    """-> test queries `<lang>:<example_id>` of MKQA for each of langs, answers in answer_lang (text + aliases)."""
    out = []
    for i, row in json_lines(path):
        eid = field(row, "example_id", path, i)
        queries, answers = field(row, "queries", path, i, dict), field(row, "answers", path, i, dict)
        if not isinstance(answers.get(answer_lang), list):
            raise DataError(f"{path}:{i}: no answers in {answer_lang!r} (--answer-lang)")
        golds = []
        for a in answers[answer_lang]:
            if not isinstance(a, dict) or not isinstance(a.get("type"), str):
                raise DataError(f"{path}:{i}: an answer must be an object with a 'type'")
            if a["type"] in ("unanswerable", "long_answer", "binary"):
                continue
            if not isinstance(a.get("text"), str) or not all(isinstance(x, str) for x in a.get("aliases") or []):
                raise DataError(f"{path}:{i}: a {a['type']!r} answer needs a string 'text' and string 'aliases'")
            golds += [a["text"], *(a.get("aliases") or [])]
        golds = span_answers(golds)
        for lang in langs:
            if not isinstance(queries.get(lang), str) or not queries[lang].strip():
                raise DataError(f"{path}:{i}: no query in {lang!r}")
            if not golds:
                stats["dropped_no_span_answer"]["test"] += 1
                continue
            out.append(dict(qid=f"{lang}:{eid}", lang=lang, text=queries[lang], answers=golds, split="test",
                            where=f"{path}:{i}"))
    return out


# ----------------------------------------------------------------------------- DPR's has_answer

def _char_class(cats, limit=0x32400):
    """A regex character class of the code points below `limit` whose category starts with one of `cats`."""
    ranges, start = [], None
    for c in range(limit + 1):
        inside = c < limit and unicodedata.category(chr(c))[0] in cats
        if inside and start is None:
            start = c
        elif not inside and start is not None:
            ranges.append(re.escape(chr(start)) + ("-" + re.escape(chr(c - 1)) if c - 1 > start else ""))
            start = None
    return "".join(ranges)


_DPR_TOKEN = None


def dpr_tokens(text):
    """DPR's SimpleTokenizer words, uncased, of the NFD form: runs of \\p{L}\\p{N}\\p{M}, or one character that is
    not a separator or control (\\p{Z}, \\p{C})."""
    global _DPR_TOKEN
    if _DPR_TOKEN is None:
        _DPR_TOKEN = re.compile(f"[{_char_class('LNM')}]+|[^{_char_class('ZC')}]")
    return _DPR_TOKEN.findall(unicodedata.normalize("NFD", text).lower())


def _index(words, key, start):
    try:
        return words.index(key, start)
    except ValueError:
        return -1


class AnswerIndex:
    """Finds which answers' token runs occur in a passage: each answer is filed under its longest token, so a
    passage costs one set intersection, and only answers sharing a token with it are compared."""

    def __init__(self, answers):
        self.answers = list(dict.fromkeys(t for t in (tuple(dpr_tokens(a)) for a in answers) if t))
        self.by_key = {}
        for k, toks in enumerate(self.answers):
            self.by_key.setdefault(max(toks, key=len), []).append(k)

    def found_in(self, words):
        """-> ids (positions in self.answers) of the answers found in the token list `words`."""
        hits = []
        for key in self.by_key.keys() & set(words):
            at, j = [], -1
            while (j := _index(words, key, j + 1)) >= 0:  # list.index runs in C: most passages hold a key once
                at.append(j)
            for k in self.by_key[key]:
                toks = self.answers[k]
                off = toks.index(key)
                if any(tuple(words[j - off:j - off + len(toks)]) == toks for j in at if j >= off):
                    hits.append(k)
        return hits


# ----------------------------------------------------------------------------- passages

def dpr_passages(path):
    """Yield (line number, id, text, title) of DPR's passage tsv, streamed; the header must be id, text, title."""
    if not os.path.isfile(path):
        raise DataError(f"{path}:0: file not found")
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        try:
            for row in rows:
                i = rows.line_num
                if i == 1:
                    if row != ["id", "text", "title"]:
                        raise DataError(f"{path}:1: expected the header 'id<TAB>text<TAB>title'")
                    continue
                if len(row) != 3:
                    raise DataError(f"{path}:{i}: expected 3 tab-separated fields (id, text, title), got {len(row)}")
                if not row[0].strip():
                    raise DataError(f"{path}:{i}: empty passage id")
                yield i, row[0], row[1], row[2]
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{rows.line_num + 1}: not valid UTF-8 ({e.reason})") from None
        except csv.Error as e:
            raise DataError(f"{path}:{rows.line_num}: {e}") from None


def passage_line(pid, text, title):
    return json.dumps({"_id": pid, "title": title, "text": text}, ensure_ascii=False) + "\n"


class Corpus:
    """The passages kept while a passage file is streamed once. keep=None: every passage, written as read (`lines`
    is then the generator to write); else the `keep` passages with the smallest seeded keys, plus `must` ones."""

    def __init__(self, keep, seed):
        self.keep, self.rng, self.sample, self.must, self.ids = keep, random.Random(seed), [], {}, {}  # ids: row

    def add(self, row, where, pid, text, title, must=False):
        """-> the passage's random key; `must`: keep it whatever the sample."""
        if pid in self.ids:
            raise DataError(f"{where}: duplicate passage id {pid!r} (first as passage {self.ids[pid] + 1})")
        self.ids[pid] = row
        key = self.rng.random()
        item = (row, pid, text, title)
        if self.keep is not None:
            if must:
                self.must[row] = item
            elif len(self.sample) < self.keep:
                heapq.heappush(self.sample, (-key, item))
            elif self.sample and -self.sample[0][0] > key:
                heapq.heapreplace(self.sample, (-key, item))
        return key, item

    def kept(self):
        """The kept passages (row, id, text, title), in file order."""
        rows = dict(self.must)
        rows.update({item[0]: item for _, item in self.sample})
        return [rows[r] for r in sorted(rows)]


# ----------------------------------------------------------------------------- the two answer benchmarks

def answer_benchmark(out, queries, passages, keep=None, max_positives=MAX_POSITIVES, seed=0, stats=None):
    """Write `queries` (dicts qid, lang, text, answers, split) with DPR's passage tsv `passages` to `out`: qrels by
    has_answer (module docstring), answers.jsonl, stats.json. -> stats."""
    check_out(out)
    seen = {}
    for q in queries:
        if q["qid"] in seen:
            raise DataError(f"{q['where']}: query id {q['qid']!r} also at {seen[q['qid']]}")
        seen[q["qid"]] = q["where"]
    index = AnswerIndex(a for q in queries for a in q["answers"])
    aid = {t: k for k, t in enumerate(index.answers)}
    best = [[] for _ in index.answers]   # per answer: heap of (-key, row, pid) of the max_positives smallest keys
    found = Counter()                    # per answer: passages holding it
    corpus = Corpus(keep, seed)

    def scan():  # one pass over the tsv: yields corpus lines (keep=None) and fills best / found
        for n, (i, pid, text, title) in enumerate(dpr_passages(passages)):
            key, item = corpus.add(n, f"{passages}:{i}", pid, text, title)
            for k in index.found_in(dpr_tokens(text)):
                found[k] += 1
                if len(best[k]) < max_positives:
                    heapq.heappush(best[k], (-key, n, item))
                elif -best[k][0][0] > key:
                    heapq.heapreplace(best[k], (-key, n, item))
            if keep is None:
                yield passage_line(pid, text, title)
        if keep is not None:
            for _, heap in zip(index.answers, best):
                for _, n, item in heap:
                    corpus.must[n] = item
            yield from (passage_line(pid, text, title) for _, pid, text, title in corpus.kept())

    qrels = {s: [] for s in SPLITS}

    def judge():  # after the scan: each query's positives, the smallest keys over all its answers
        for q in queries:
            ks = {aid[t] for t in (tuple(dpr_tokens(a)) for a in q["answers"]) if t}
            pos = heapq.nsmallest(max_positives, {(-nk, n, item[1]) for k in ks for nk, n, item in best[k]})
            stats["queries"][q["split"]][q["lang"]] += 1
            if pos:
                qrels[q["split"]] += [(q["qid"], pid) for _, _, pid in sorted(pos, key=lambda x: x[1])]
            else:
                stats["unmatched"][q["split"]][q["lang"]] += 1
        if not any(qrels.values()):
            raise DataError(f"{passages}:0: no passage holds an answer of any query")
        stats.update(passages=len(corpus.ids) if keep is None else len(corpus.kept()), passages_read=len(corpus.ids),
                     answers_found_in_passages=sum(found.values()))
        return rows_text([{"_id": q["qid"], "text": q["text"], "lang": q["lang"]} for q in queries])

    stats = stats or {}
    stats.update(queries={s: Counter() for s in SPLITS}, unmatched={s: Counter() for s in SPLITS},
                 keep_passages=keep, max_positives=max_positives, seed=seed,
                 relevance="heuristic: passages holding an answer (DPR has_answer); R@kt is the benchmark's metric")
    files = {"corpus.jsonl": scan(), "queries.jsonl": judge,
             "answers.jsonl": lambda: rows_text([{"_id": q["qid"], "answers": q["answers"]} for q in queries])}
    files.update({f"qrels/{s}.tsv": (lambda s=s: qrels_text(qrels[s])) for s in SPLITS})
    files["stats.json"] = lambda: json.dumps(stats, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    write_dataset(out, files)
    return stats


def question_splits(train=None, dev=None, test=None, hold_out=0, seed=0, stats=None):
    """XOR-TyDi question files -> queries with their split; --hold-out moves that many seeded training queries to
    dev (only without a dev file)."""
    stats["dropped_no_span_answer"] = Counter()
    queries = []
    for split, path in (("train", train), ("dev", dev), ("test", test)):
        if path:
            queries += xor_questions(path, split, stats)
    if hold_out:
        if dev:
            raise DataError("--hold-out: not with --dev (the dev split comes from one of them)")
        pool = [q for q in queries if q["split"] == "train"]
        if hold_out >= len(pool):
            raise DataError(f"--hold-out {hold_out}: the training file has only {len(pool)} queries")
        for q in random.Random(seed).sample(pool, hold_out):
            q["split"] = "dev"
    return queries


def xor_retrieve(out, passages, train=None, dev=None, test=None, hold_out=0, keep=None,
                 max_positives=MAX_POSITIVES, seed=0):
    if not (dev or test or hold_out):
        raise DataError("xor-retrieve: give --dev or --test (or --hold-out): nothing to evaluate on")
    stats = {"source": "xor-retrieve"}
    queries = question_splits(train, dev, test, hold_out, seed, stats)
    return answer_benchmark(out, queries, passages, keep, max_positives, seed, stats)


def mkqa(out, passages, mkqa_file, langs, answer_lang="en", train=None, hold_out=0, keep=None,
         max_positives=MAX_POSITIVES, seed=0):
    if not langs or len(set(langs)) != len(langs):
        raise DataError(f"--langs: need distinct languages, got {','.join(langs)!r}")
    stats = {"source": "mkqa", "answer_lang": answer_lang}
    queries = question_splits(train, None, None, hold_out, seed, stats)
    queries += mkqa_questions(mkqa_file, langs, answer_lang, stats)
    return answer_benchmark(out, queries, passages, keep, max_positives, seed, stats)


def main_import(args):
    """data.py's `import` subcommand for xor-retrieve and mkqa (--keep-passages checked there); -> stats."""
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    if not args.passages:
        raise DataError(f"{args.source}: --passages (DPR's psgs_w100.tsv) is required")
    if args.max_positives < 1:
        raise DataError(f"--max-positives must be >= 1, got {args.max_positives}")
    common = dict(hold_out=args.hold_out, keep=args.keep_passages, max_positives=args.max_positives, seed=args.seed)
    if args.source == "xor-retrieve":
        return xor_retrieve(args.out, args.passages, args.train, args.dev, args.test, **common)
    if not (args.mkqa and args.langs):
        raise DataError("mkqa: --mkqa and --langs are required")
    if args.dev or args.test:
        raise DataError("mkqa: MKQA is the test split; --dev / --test do not apply (use --hold-out)")
    return mkqa(args.out, args.passages, args.mkqa, split(args.langs), args.answer_lang, args.train, **common)


if __name__ == "__main__":
    sys.exit("run it as: python data.py import xor-retrieve|mkqa ...")
