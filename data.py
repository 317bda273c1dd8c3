"""Data sets: strict loading of BEIR-layout directories, the subword tokenizer, and the synthetic benchmark's CLI.

    python data.py synth --out data/tiny --size tiny --seed 0   # write the synthetic benchmark (synth.py)
    python data.py check data/tiny                               # validate a data set, one-line summary
    python data.py show data/tiny --n 5                          # query / positive / hard negative per language
    python data.py import ddtp --from DIR --langs de,ja --out DIR  # a real data set from Debian's files (importers.py)
    python data.py import xor-retrieve|mkqa|mrtydi ...           # the paper's benchmarks (benchmarks.py, mrtydi.py)

A data set is a directory in the BEIR layout:
    corpus.jsonl           {"_id", "title", "text"}             the pivot-language passages
    queries.jsonl          {"_id", "text", "lang"}              queries in many languages
    qrels/{train,dev,test}.tsv   header `query-id corpus-id score`, one judgement a line (at least one split)
    answers.jsonl          {"_id", "answers": [str]}            optional: answer strings, for R@2kt / R@5kt
    translations.jsonl     {"_id", "text"}                      optional: pivot form of a query (oracle translator)
    unlabelled/<lang>.txt  one sentence a line                   optional: monolingual text for pre-training
Every problem is reported as one line `DIR/file:line: problem` (a DataError); the CLI prints it and exits 1.
"""
import argparse
import heapq
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[Q]", "[P]", "[BOS]", "[EOS]"]  # ids 0..8, in this order
PAD, UNK, CLS, SEP, MASK, Q, P, BOS, EOS = range(len(SPECIALS))
SPLITS = ("train", "dev", "test")


class DataError(ValueError):
    """A problem in a data set, worded as `path:line: problem`."""


def lang_tag(lang):
    return f"<2{lang}>"


@dataclass
class Dataset:
    root: str
    pids: list                 # passage ids, in file order (row i of every passage matrix)
    titles: list
    texts: list
    queries: dict              # qid -> text
    lang: dict                 # qid -> language code
    qrels: dict                # split -> {qid: {pid: score}}, only the splits present
    answers: dict = None       # qid -> [answer strings], when answers.jsonl exists
    translations: dict = None  # qid -> pivot-language text, when translations.jsonl exists
    unlabelled: dict = field(default_factory=dict)  # lang -> [sentences]

    def passage_text(self, i):
        return f"{self.titles[i]} {self.texts[i]}".strip()

    def languages(self):
        """Query languages that appear in some split, sorted."""
        return sorted({self.lang[q] for split in self.qrels.values() for q in split})

    def summary(self):
        splits = ", ".join(f"{s} {len(self.qrels[s])}" for s in SPLITS if s in self.qrels)
        extra = [name for name, have in (("answers", self.answers), ("translations", self.translations),
                                         ("unlabelled " + "/".join(sorted(self.unlabelled)), self.unlabelled)) if have]
        return (f"{self.root}: {len(self.pids)} passages; queries: {splits}; languages: "
                f"{' '.join(self.languages())}" + (f"; with {', '.join(extra)}" if extra else ""))


def _lines(path):
    """Yield (line number, text) of a UTF-8 file, skipping blank lines; a file with no content is an error."""
    if not os.path.isfile(path):
        raise DataError(f"{path}:0: file not found")
    n = 0
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if line.strip():
                n += 1
                yield i, line
    if n == 0:
        raise DataError(f"{path}:1: empty file")


def lone_surrogate(value):
    """(key, index, character) of the first string in value (a string, or lists / dicts of them; key: the dict key
    above it, else None) that is not valid Unicode, else None. JSON's \\ud800 escape decodes to such a lone
    surrogate, which the tokenizer and every UTF-8 writer reject."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return None, e.start, value[e.start]
    elif isinstance(value, list):
        return next(filter(None, map(lone_surrogate, value)), None)
    elif isinstance(value, dict):
        for key, v in value.items():
            bad = lone_surrogate(key) or lone_surrogate(v)
            if bad:
                return (key if bad[0] is None else bad[0]), bad[1], bad[2]
    return None


def json_object(line, path, i):
    """Line i of `path`, which must hold one JSON object -> that dict."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{i}: invalid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{i}: expected a JSON object")
    return row


def read_jsonl(path, required, optional=()):
    """-> {_id: row} of a JSON-lines file; each row needs a unique `_id` and the `required` string fields, and the
    `optional` fields, where present, must be strings. Every string of a row must be valid Unicode (no lone
    surrogate). row["_line"] keeps the line number for later messages."""
    rows = {}
    for i, line in _lines(path):
        row = json_object(line, path, i)
        bad = lone_surrogate(row) if "\\u" in line else None  # valid UTF-8 holds a surrogate only as an escape
        if bad:
            raise DataError(f"{path}:{i}: field {bad[0]!r} is not valid Unicode "
                            f"(a lone surrogate {bad[2]!r} at character {bad[1]})")
        for key in ("_id", *required, *(k for k in optional if k in row)):
            if not isinstance(row.get(key), str) or (key == "_id" and not row[key]):
                raise DataError(f"{path}:{i}: missing or non-string field {key!r}")
        if row["_id"] in rows:
            raise DataError(f"{path}:{i}: duplicate id {row['_id']!r}")
        row["_line"] = i
        rows[row["_id"]] = row
    return rows


HEADER = ["query-id", "corpus-id", "score"]


def read_qrels(path, qids, pids):
    """-> {qid: {pid: score}} of a BEIR qrels tsv whose ids must exist among `qids` and `pids`; a (qid, pid) pair
    judged twice is an error (the second score would silently replace the first)."""
    qrels, header, first = {}, True, {}
    for i, line in _lines(path):
        parts = line.split("\t")
        if header:
            if parts != HEADER:
                raise DataError(f"{path}:{i}: expected the header 'query-id<TAB>corpus-id<TAB>score'")
            header = False
            continue
        if len(parts) != 3:
            raise DataError(f"{path}:{i}: expected 3 tab-separated fields, got {len(parts)}")
        q, p, score = parts
        if q not in qids:
            raise DataError(f"{path}:{i}: unknown query id {q!r}")
        if p not in pids:
            raise DataError(f"{path}:{i}: unknown corpus id {p!r}")
        try:
            score = int(score)
        except ValueError:
            raise DataError(f"{path}:{i}: score {score!r} is not an integer") from None
        if (q, p) in first:
            raise DataError(f"{path}:{i}: ({q!r}, {p!r}) is judged twice (first at line {first[q, p]})")
        first[q, p] = i
        qrels.setdefault(q, {})[p] = score
    if not qrels:
        raise DataError(f"{path}:{i + 1}: no judgements after the header")
    return qrels


def load(root):
    """Read and check a BEIR-layout directory; raises DataError on the first problem."""
    if not os.path.isdir(root):
        raise DataError(f"{root}:0: not a directory")
    path = lambda *parts: os.path.join(root, *parts)  # noqa: E731
    corpus = read_jsonl(path("corpus.jsonl"), ["text"], ["title"])
    queries = read_jsonl(path("queries.jsonl"), ["text"], ["lang"])
    qrels = {s: read_qrels(path("qrels", f"{s}.tsv"), queries, corpus)
             for s in SPLITS if os.path.exists(path("qrels", f"{s}.tsv"))}
    if not qrels:
        raise DataError(f"{path('qrels')}:0: no qrels/train.tsv, dev.tsv or test.tsv")
    seen = {}
    for split, judged in qrels.items():  # a query judged in two splits would leak a test answer into training
        for qid in judged:
            if qid in seen:
                i = next(i for i, line in _lines(path("qrels", f"{split}.tsv")) if line.split("\t")[0] == qid)
                raise DataError(f"{path('qrels', f'{split}.tsv')}:{i}: query {qid!r} is also judged in {seen[qid]}.tsv")
            seen[qid] = split
    for split in qrels.values():
        for qid in split:
            if not queries[qid].get("lang"):
                raise DataError(f"{path('queries.jsonl')}:{queries[qid]['_line']}: query {qid!r} is judged but has no 'lang'")
    data = Dataset(root, list(corpus), [r.get("title", "") for r in corpus.values()],
                   [r["text"] for r in corpus.values()], {q: r["text"] for q, r in queries.items()},
                   {q: r["lang"] for q, r in queries.items() if r.get("lang")}, qrels)
    def extra(name, required):  # an optional file about queries: its ids must be known
        rows = read_jsonl(path(name), required)
        for qid, row in rows.items():
            if qid not in queries:
                raise DataError(f"{path(name)}:{row['_line']}: unknown query id {qid!r}")
        return rows
    if os.path.exists(path("answers.jsonl")):
        rows = extra("answers.jsonl", [])
        for row in rows.values():
            a = row.get("answers")
            if not isinstance(a, list) or not all(isinstance(x, str) for x in a):
                raise DataError(f"{path('answers.jsonl')}:{row['_line']}: field 'answers' must be a list of strings")
        data.answers = {q: r["answers"] for q, r in rows.items()}
    if os.path.exists(path("translations.jsonl")):
        data.translations = {q: r["text"] for q, r in extra("translations.jsonl", ["text"]).items()}
    if os.path.isdir(path("unlabelled")):
        for name in sorted(os.listdir(path("unlabelled"))):
            if name.endswith(".txt"):
                data.unlabelled[name[:-4]] = [line for _, line in _lines(path("unlabelled", name))]
    return data


# ----------------------------------------------------------------------------- tokenizer

AUTO_VOCAB = (4, 4000, 32000)  # vocab_size 0: a quarter of the distinct words, within [4000, 32000]


def train_tokenizer(texts, langs, vocab_size=8000):
    """A WordPiece tokenizer learnt from `texts` (an iterable of strings): SPECIALS, then one `<2xx>` tag per language.
    vocab_size 0 sizes the vocabulary to the text (AUTO_VOCAB): a few thousand pieces serve a small synthetic world,
    but on real text in ten languages they split names and identifiers into letters (measured on the DDTP benchmark,
    README: 4,000 pieces gave BM25 recall@100 0.47, 16,000 gave 0.62).

    The normaliser (NFKC, lower case, spaces around CJK ideographs) and the pre-tokeniser (white space and punctuation)
    are mBERT's, so scripts written without spaces between words are split into characters before the subword model
    sees them; the word-length cap is lifted so that long unsegmented runs (kana, Thai) become subwords, not [UNK].
    The vocabulary is learnt here by `learn_wordpieces`, not by the library's trainer, whose ties between equally
    frequent pairs fall differently from run to run: the same texts must give the same file.
    """
    tok = Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True)])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    counts = Counter(w for t in texts for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(t)))
    specials = SPECIALS + [lang_tag(lang) for lang in sorted(set(langs))]
    share, lo, hi = AUTO_VOCAB
    pieces = learn_wordpieces(counts, (vocab_size or min(hi, max(lo, len(counts) // share))) - len(specials))
    vocab = {t: i for i, t in enumerate(specials + [p for p in pieces if p not in specials])}
    tok.model = models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=10_000)
    tok.add_special_tokens(specials)
    return tok


def learn_wordpieces(counts, size):
    """BPE merges over a word-frequency table, as WordPiece vocabularies are built; -> the pieces, in order learnt.

    A word starts as its characters, every one but the first marked as a continuation ('##'). The most frequent
    adjacent pair (ties: the smaller pair in string order) is merged into a new piece until `size` pieces exist or
    no pair occurs twice. Pair counts are updated only for the words that contain the merged pair.
    """
    words = [[w[0]] + ["##" + c for c in w[1:]] for w in sorted(counts)]
    freq = [counts[w] for w in sorted(counts)]
    pieces = sorted({s for w in words for s in w})
    pairs, where = Counter(), {}
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pairs[pair] += freq[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    while len(pieces) < size and heap:
        n, pair = heapq.heappop(heap)
        if -n != pairs.get(pair, 0):  # a stale entry: the count changed since it was pushed
            continue
        if -n < 2:
            break
        new = pair[0] + pair[1][2:]
        pieces.append(new)
        changed = set()
        for i in sorted(where.pop(pair)):
            w = words[i]
            for p in zip(w, w[1:]):
                pairs[p] -= freq[i]
                changed.add(p)
            merged, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == pair:
                    merged.append(new)
                    j += 2
                else:
                    merged.append(w[j])
                    j += 1
            words[i] = merged
            for p in zip(merged, merged[1:]):
                pairs[p] += freq[i]
                where.setdefault(p, set()).add(i)
                changed.add(p)
        del pairs[pair]
        for p in changed - {pair}:
            heapq.heappush(heap, (-pairs[p], p))
    return pieces


def tokenizer_texts(data):
    """The text a tokenizer is trained on: passages, training queries and unlabelled sentences (never dev/test)."""
    yield from (data.passage_text(i) for i in range(len(data.pids)))
    yield from (data.queries[q] for q in data.qrels.get("train", {}))
    for lang in sorted(data.unlabelled):
        yield from data.unlabelled[lang]


def load_tokenizer(path):
    """A saved tokenizer; text that happens to spell a special token ('[SEP]', '<2en>') stays text."""
    tok = Tokenizer.from_file(path)
    tok.encode_special_tokens = True
    return tok


def encode(tok, texts, max_len, prefix=()):
    """Token ids of each text, `prefix` ids first, cut to max_len tokens in all."""
    return [list(prefix) + e.ids[:max_len - len(prefix)] for e in tok.encode_batch(list(texts), add_special_tokens=False)]


# ----------------------------------------------------------------------------- noise for pre-training

def mlm_mask(ids, mask, prob, vocab_size, gen):
    """BERT masking of a padded batch ids, mask [B, T] (position 0, the marker, is never picked): each real token
    is picked with probability `prob`; a picked token becomes [MASK] (80 %), a random non-special token (10 %) or
    stays (10 %). -> (corrupted ids [B, T], picked [B, T] bool: the positions to predict)."""
    r = torch.rand(ids.shape, generator=gen)                                           # one draw decides both
    picked = (r < prob) & mask
    picked[:, 0] = False
    x = ids.clone()
    x[picked & (r < 0.8 * prob)] = MASK
    swap = picked & (r >= 0.8 * prob) & (r < 0.9 * prob)
    x[swap] = torch.randint(len(SPECIALS), vocab_size, (int(swap.sum()),), generator=gen)
    return x, picked


def span_corrupt(tokens, noise, gen, mean_span=3):
    """mT5-style span corruption with one sentinel, [MASK]: about `noise` of the tokens, in spans of mean_span
    starting at random places, are dropped. -> (input: each dropped span replaced by one [MASK],
    target: [MASK] span_1 [MASK] span_2 ...). Putting each target span back at its [MASK] gives `tokens`."""
    drop = [False] * len(tokens)
    for s in torch.randint(max(1, len(tokens)), (max(1, round(noise * len(tokens) / mean_span)),), generator=gen).tolist():
        drop[s:s + mean_span] = [True] * len(drop[s:s + mean_span])
    src, tgt = [], []
    for j, t in enumerate(tokens):
        if drop[j] and (j == 0 or not drop[j - 1]):
            src.append(MASK)
            tgt.append(MASK)
        (tgt if drop[j] else src).append(t)
    return src, tgt


# ----------------------------------------------------------------------------- CLI

def show(data, n=5):
    """Print, for each language, n test (else dev, else train) queries with their positive and a hard negative.

    The hard negative is another passage with the positive's title (the same article or entity) when there is one,
    else the passage sharing the most words with the query.
    """
    split = next(s for s in ("test", "dev", "train") if s in data.qrels)
    by_title, row = {}, {pid: i for i, pid in enumerate(data.pids)}
    for i, t in enumerate(data.titles):
        by_title.setdefault(t, []).append(i)
    words = [set(data.passage_text(i).lower().split()) for i in range(len(data.pids))]
    for lang in data.languages():
        print(f"== {lang} ({split})")
        for qid in [q for q in data.qrels[split] if data.lang[q] == lang][:n]:
            pos = [row[p] for p, s in data.qrels[split][qid].items() if s > 0]
            same = [i for i in by_title.get(data.titles[pos[0]], []) if i not in pos] if pos else []
            qw = set(data.queries[qid].lower().split())
            neg = same[0] if same else max((i for i in range(len(words)) if i not in pos), key=lambda i: len(qw & words[i]))
            print(f"  query    {data.queries[qid]}" + (f"   [{data.translations[qid]}]" if data.translations else ""))
            for i in pos[:1]:
                print(f"  positive {data.passage_text(i)}")
            print(f"  hard neg {data.passage_text(neg)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("synth", help="write the synthetic benchmark")
    a.add_argument("--out", required=True)
    a.add_argument("--size", choices=["micro", "tiny", "small"], default="tiny")
    a.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("check", help="validate a data set")
    a.add_argument("dir")
    a = sub.add_parser("show", help="print examples per language")
    a.add_argument("dir")
    a.add_argument("--n", type=int, default=5)
    a = sub.add_parser("import", help="convert a public data set to this layout (importers.py, benchmarks.py, "
                                      "mrtydi.py)")
    a.add_argument("source", choices=["ddtp", "xor-retrieve", "mkqa", "mrtydi"],
                   help="ddtp: Debian's translated package descriptions (importers.py); xor-retrieve, mkqa "
                        "(benchmarks.py), mrtydi (Mr. TyDi or MIRACL, mrtydi.py): the paper's benchmarks")
    a.add_argument("--from", dest="src", help="ddtp: folder with Translation-en and Translation-<lang> files; "
                                              "mrtydi: the unpacked folder of one language")
    a.add_argument("--langs", default="", help="ddtp, mkqa: query languages, comma-separated (de,fr,ja,...)")
    a.add_argument("--zero-shot", default="", help="ddtp: languages of --langs that get no training queries")
    a.add_argument("--out", required=True)
    a.add_argument("--size", choices=["cpu", "full"], default="cpu", help="ddtp")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--passages", help="xor-retrieve, mkqa: DPR's English Wikipedia passages (psgs_w100.tsv)")
    a.add_argument("--train", help="xor-retrieve, mkqa: XOR-TyDi training questions (jsonl)")
    a.add_argument("--dev", help="xor-retrieve: questions for the dev split")
    a.add_argument("--test", help="xor-retrieve: questions for the test split (papers report the published dev file)")
    a.add_argument("--hold-out", type=int, default=0, help="xor-retrieve, mkqa: training questions moved to dev")
    a.add_argument("--mkqa", help="mkqa: mkqa.jsonl or mkqa.jsonl.gz")
    a.add_argument("--answer-lang", default="en", help="mkqa: the language of the answers matched (default en)")
    a.add_argument("--max-positives", type=int, default=10, help="xor-retrieve, mkqa: answer passages judged a query")
    a.add_argument("--keep-passages", type=int, help="xor-retrieve, mkqa, mrtydi: keep this many random passages "
                                                     "plus the judged ones (changes the numbers); default: all")
    a.add_argument("--lang", help="mrtydi: the language code of the queries and passages")
    a.add_argument("--corpus", nargs="+", help="mrtydi: corpus files or folders (default: <from>/collection)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "synth":
            import synth
            try:
                stats = synth.generate(args.out, args.size, args.seed)
            except OSError as e:  # --out is a file, or under one
                raise DataError(f"{e.filename}: cannot write ({e.strerror}) (--out)") from None
            print(f"wrote {args.out}: {stats['passages']} passages, {stats['queries']} queries")
        elif args.cmd == "import":
            sys.modules.setdefault("data", sys.modules[__name__])  # run as a script: importers' DataError is ours
            if args.source == "ddtp":
                import importers
                if not (args.src and args.langs):
                    raise DataError("ddtp: --from and --langs are required")
                split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
                stats = importers.ddtp(args.src, args.out, split(args.langs), split(args.zero_shot), args.size,
                                       args.seed)
                print(f"wrote {args.out}: {stats['passages']} passages, {stats['queries']} queries")
            else:
                if args.keep_passages is not None and args.keep_passages < 0:
                    raise DataError(f"--keep-passages must be >= 0, got {args.keep_passages}")
                if args.source == "mrtydi":
                    import mrtydi
                    if not (args.src and args.lang):
                        raise DataError("mrtydi: --from and --lang are required")
                    stats = mrtydi.mrtydi(args.out, args.src, args.lang, args.corpus, args.keep_passages, args.seed)
                else:
                    import benchmarks
                    stats = benchmarks.main_import(args)
                print(f"wrote {args.out}: {stats['passages']} passages; see {args.out}/stats.json")
        elif args.cmd == "check":
            print(load(args.dir).summary())
        else:
            show(load(args.dir), args.n)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
