"""The DDTP importer: Debian's translated package descriptions -> the BEIR layout of data.py (what `data.load` reads).

    python data.py import ddtp --from DIR --langs de,fr,es,pl,fi,ru,uk,ja,ko,zh_CN --zero-shot fi,uk \\
        --out data/ddtp --size cpu --seed 0

DDTP, the Debian Description Translation Project. Debian publishes each package's description in English
(`Translation-en`) and, where volunteers translated it, in other languages (`Translation-de`, ...). A file is a list
of stanzas separated by blank lines:

    Package: 0ad
    Description-md5: d943033bedada21853d2ae54a2578a7b
    Description-de: Echtzeit-Strategiespiel über antike Kriegsführung      <- the summary: one line
     0 A.D. ist ein freies, quelloffenes, plattformübergreifendes          <- the long description: lines that
     Echtzeit-Strategiespiel ...                                              start with a space,
     .                                                                        ` .` between paragraphs

`Description-md5` is the md5 of the English description the translation was made from. `apt-get -o
Acquire::Languages=en,de,... update` puts these files under /var/lib/apt/lists (name: the mirror, then
`..._i18n_Translation-<lang>.lz4`, `pt_BR` spelt `pt%5fBR`); any file in DIR whose name ends in
`Translation-<lang>` plus an optional compression suffix is read (several files of one language are read in
name order). Plain, gzip, bzip2, xz and lz4 files are read by `readers.read_bytes` (compression told by the magic
bytes; lz4 by the small decoder there, no new dependency).

The data set, and the reasons for each choice:
- Queries are the translated summaries, passages the English long descriptions (summary line not included, since
  it is the query's translation). A translation counts only where its Description-md5 equals the English one (an
  older text's translation may not match the current passage); a translated summary equal to the English one
  (nothing translated, often a bare name) is left out. Every English md5 is checked against its text.
- Titles are empty and package names appear only as ids. The name is Debian's identifier, not text the translators
  wrote; as a title it would give every query that mentions its package (a few percent, see stats.json
  `query_names_package`) a free lexical match. Names of programs inside the English prose stay, as named entities
  stay in any real corpus (`passage_names_package` says how often a passage names its package).
- Families. Packages whose English long descriptions open with the same paragraph form a family: a library and its
  -dev, -doc, -data siblings (identical long descriptions are the extreme case), the modules of one project,
  architecture variants of one compiler. Their summaries differ by a word ("(development files)") and their
  passages by a closing sentence, so judging one passage of a family and not its siblings would count right
  answers as wrong, and training would push the siblings away as negatives. Each family therefore gives ONE
  passage: its member with the most translations among --langs (ties: the first name), and only that member's
  summaries are queries; the other members never enter the corpus or a split. Near-copies that do not share their
  first paragraph (templates differing in one word: "for the marvell kernel", "into EPUB documents") stay apart:
  a reader can tell them apart, so they are fair hard negatives.
- Ambiguity. Two kept packages with the same English summary (casefolded), such as two "transitional package"s,
  are both dropped; a translated summary shared by two kept packages is dropped in that language.
- Splits are by package, so every language of a package lands in one split. Test is drawn first, then dev: each
  language gets min(size's count, 1/2 (test) or 1/4 (dev) of its queries), walking the packages in a seeded
  shuffle and taking a package while one of its languages still needs queries, with the queries of all its
  languages that still do (dev and test are partly parallel). Every other package with a query gives ONE training
  query (as in XOR-TyDi, no training query is parallel), in the rarest of its languages (fewest usable queries),
  so a small language keeps the packages it has rather than losing most of them to the large ones that translated
  them too; languages in --zero-shot give none. Training counts stay about as uneven as the translators left them.
- The corpus holds every split's passages and other families' passages (distractors) up to the size's count, in
  a seeded shuffle (search breaks ties by row, so the row order must not tell held-out passages).
  `translations.jsonl` holds each query's English summary (the oracle translator of the DR.DECR baseline).
- Sizes (SIZES): cpu, meant to train in about 30 minutes on 2 CPU cores: 150 test and 100 dev queries a language,
  5,000 training queries (the first in the seeded walk, so each language keeps its share), 8,000 passages, 2,000
  unlabelled sentences a language; full, for a GPU: 500 and 250, every training query, every family, 50,000.
- `unlabelled/<lang>.txt` (and `en.txt`): sentences of the summaries and long descriptions of that language
  (every file read, stale translations too), deduplicated, in a seeded shuffle, without any sentence of a package
  whose family holds a dev or test query (nor the same sentence written for another package) and without any
  sentence that contains a dev/test query of its language (for en: the queries' English summaries), casefolded.
  So no held-out query, nor the translation of its passage, is ever pre-trained on.
- stats.json: counts per language (translated, current md5, usable, per split, unlabelled sentences) and what was
  merged or dropped. Everything is decided by --seed; the same files and flags give the same bytes.
Wrapped lines of a paragraph are joined with a space, except between two wide (CJK) characters, where ja, zh and
ko translators break lines inside words. Errors are one line, `file:line: problem` (lines of the decompressed text).
"""
import hashlib
import json
import os
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from urllib.parse import unquote

from data import SPLITS, DataError
from readers import check_out, qrels_text, read_bytes, rows_text, write_dataset

PIVOT = "en"
SIZES = {  # per language: dev and test queries (at most); in all: training queries, passages; unlabelled per language
    "cpu": dict(test=150, dev=100, train=5000, passages=8000, unlabelled=2000),    # meant for ~30 min on 2 cores
    "full": dict(test=500, dev=250, train=None, passages=None, unlabelled=50000),  # None: all there is
}
SHARE = {"test": 1 / 2, "dev": 1 / 4}  # the most of a language's queries a held-out split may take


# ----------------------------------------------------------------------------- DDTP stanzas

@dataclass
class Description:
    package: str
    md5: str
    summary: str
    paras: list    # paragraphs of the long description, wrapped lines joined
    line: int      # where its stanza starts


def translation_files(src, lang):
    """Files in src named `...Translation-<lang>` plus an optional compression suffix (`%5f` read as `_`)."""
    if not os.path.isdir(src):
        raise DataError(f"{src}:0: not a directory (--from)")
    pat = re.compile(r"(?:^|[_/])Translation-(.+?)(?:\.(?:gz|bz2|xz|lz4))?$")
    found = sorted(os.path.join(src, n) for n in os.listdir(src)
                   if (m := pat.search(n)) and unquote(m.group(1)) == lang and os.path.isfile(os.path.join(src, n)))
    if not found:
        raise DataError(f"{src}:0: no Translation-{lang} file (get it with apt-get -o Acquire::Languages=...,{lang} "
                        f"update, then copy it from /var/lib/apt/lists)")
    return found


def read_stanzas(path, lang, check_md5=False):
    """-> [Description] of one Translation file; any malformed stanza is a DataError `path:line: problem`."""
    try:
        text = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:0: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    out, fields, raw, field = [], {}, [], None
    want = f"Description-{lang}"

    def end():  # the stanza in `fields` and `raw` is complete
        start = min(n for _, n in fields.values())
        for key in ("Package", "Description-md5", want):
            if key not in fields:
                raise DataError(f"{path}:{start}: stanza without a {key} field")
        (package, i), md5, summary = fields["Package"], fields["Description-md5"][0].strip(), fields[want][0].strip()
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", package.strip()):
            raise DataError(f"{path}:{i}: {package.strip()!r} is not a Debian package name")
        if not re.fullmatch(r"[0-9a-f]{32}", md5):
            raise DataError(f"{path}:{fields['Description-md5'][1]}: Description-md5 is not 32 hex digits")
        long = "".join(f" {r}\n" for r in raw)  # the md5 is of the summary line and these lines, as published
        if check_md5 and hashlib.md5(f"{fields[want][0]}\n{long}".encode()).hexdigest() != md5:
            raise DataError(f"{path}:{start}: Description-md5 does not match the description")
        out.append(Description(package.strip(), md5, summary, paragraphs(raw), start))

    for i, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip(" \t"):  # a stanza ends at an empty line (a no-break space is text)
            if fields:
                end()
            fields, raw, field = {}, [], None
        elif line[0] in " \t":
            if field != want:
                raise DataError(f"{path}:{i}: continuation line outside a {want} field")
            raw.append(line[1:])
        else:
            key, sep, value = line.partition(":")
            if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
                raise DataError(f"{path}:{i}: expected 'Field: value' or a continuation line starting with a space")
            if key.startswith("Description-") and key not in (want, "Description-md5"):
                raise DataError(f"{path}:{i}: field {key} in a Translation-{lang} file")
            if key in fields:
                raise DataError(f"{path}:{i}: second {key} field in one stanza")
            fields[key], field = (value.lstrip(" \t"), i), key  # trailing spaces are part of the md5's text
    if fields:
        end()
    return out


def paragraphs(raw):
    """Long-description lines (first space removed) -> paragraphs. `.` alone (or white space) separates paragraphs;
    a verbatim line (two leading spaces) holding only `.` is dropped; wrapped lines are joined by `join_lines`."""
    paras, cur = [], []
    for r in raw:
        if r.rstrip() == "." or not r.strip():  # translators sometimes write a blank line with a no-break space
            paras.append(cur)
            cur = []
        elif r.strip() != ".":
            cur.append(r.strip())
    paras.append(cur)
    return [join_lines(p) for p in paras if p]


def _wide(c):
    return unicodedata.east_asian_width(c) in "WF"


def join_lines(lines):
    """Join wrapped lines with one space, or none between two wide characters (CJK text breaks inside words)."""
    s = " ".join(lines[0].split())
    for t in lines[1:]:
        t = " ".join(t.split())
        s += ("" if _wide(s[-1]) and _wide(t[0]) else " ") + t
    return s


def read_language(src, lang):
    """-> ({package: Description}, number of packages dropped for two different descriptions in one language)."""
    found, conflicts = {}, set()
    for path in translation_files(src, lang):
        for d in read_stanzas(path, lang, check_md5=lang == PIVOT):
            old = found.setdefault(d.package, d)
            if (old.md5, old.summary, old.paras) != (d.md5, d.summary, d.paras):
                conflicts.add(d.package)
    for p in conflicts:
        del found[p]
    return found, len(conflicts)


def sentences(text):
    """Split a paragraph after . ! ? and a space, and after 。！？ (unlabelled text is one sentence a line)."""
    return [s for s in re.split(r"(?<=[.!?])\s+|(?<=[。！？])", text) if s.strip()]


def norm(s):
    return " ".join(s.casefold().split())


# ----------------------------------------------------------------------------- DDTP -> BEIR

def ddtp(src, out, langs, zero_shot=(), size="cpu", seed=0):
    """Read Translation-en and Translation-<lang> for each of `langs` from `src`, write the data set to `out`
    (which must not exist or be empty); -> the stats written to stats.json. See the module docstring."""
    cfg, langs, zero_shot = SIZES[size], list(langs), list(zero_shot)
    if not langs or len(set(langs)) != len(langs) or PIVOT in langs:
        raise DataError(f"--langs: need distinct query languages other than {PIVOT!r}, got {','.join(langs)!r}")
    if set(zero_shot) - set(langs):
        raise DataError(f"--zero-shot: {','.join(sorted(set(zero_shot) - set(langs)))} not in --langs")
    check_out(out)
    en, conflicts = read_language(src, PIVOT)
    stats = {"source": "ddtp", "size": size, "seed": seed, "zero_shot": zero_shot,
             "english": {"descriptions": len(en), "conflicting": conflicts}, "languages": {}}
    found, tr = {PIVOT: en}, {}  # every stanza read; those whose md5 matches the English one
    for lang in langs:
        found[lang], n_conflict = read_language(src, lang)
        tr[lang] = {p: d for p, d in found[lang].items() if p in en and d.md5 == en[p].md5}
        stats["languages"][lang] = {"translated": len(found[lang]) + n_conflict, "conflicting": n_conflict,
                                    "current": len(tr[lang])}
    reps, rep_of, query = pick_queries(en, tr, langs, stats)
    rng = random.Random(seed)
    judged = assign_splits(query, langs, zero_shot, cfg, rng)
    split_of = {r: s for s in SPLITS for _, r in judged[s]}
    corpus = list(dict.fromkeys(r for s in SPLITS for _, r in judged[s]))  # the splits' passages, then distractors
    rest = sorted(set(reps) - set(corpus))
    rng.shuffle(rest)
    corpus += rest[:max(0, cfg["passages"] - len(corpus))] if cfg["passages"] else rest
    rng.shuffle(corpus)  # row order must not tell a held-out passage (search breaks ties by row)
    held = {p for p in rep_of if split_of.get(rep_of[p]) in ("dev", "test")}  # every package of a held-out family
    unlabelled = {}
    for lang in [PIVOT] + langs:
        texts = {p: d for p, d in found[lang].items() if p in rep_of}
        queries = [query[lang][r] if lang != PIVOT else en[r].summary
                   for s in ("dev", "test") for ql, r in judged[s] if lang in (ql, PIVOT)]
        unlabelled[lang], dropped = unlabelled_text(texts, held, queries, cfg["unlabelled"], rng)
        stats["languages"].setdefault(lang, {}).update(unlabelled=len(unlabelled[lang]), unlabelled_dropped=dropped)

    qid = lambda lang, r: f"{lang}:{r}"  # noqa: E731
    rows = {"corpus.jsonl": [{"_id": r, "title": "", "text": " ".join(en[r].paras)} for r in corpus],
            "queries.jsonl": [{"_id": qid(lang, r), "text": query[lang][r], "lang": lang}
                              for s in SPLITS for lang, r in judged[s]],
            "translations.jsonl": [{"_id": qid(lang, r), "text": en[r].summary}
                                   for s in SPLITS for lang, r in judged[s]]}
    files = {name: rows_text(rs) for name, rs in rows.items()}
    files.update({f"qrels/{s}.tsv": qrels_text([(qid(lang, r), r) for lang, r in judged[s]]) for s in SPLITS})
    for lang, lines in unlabelled.items():
        if lines:
            files[f"unlabelled/{lang}.txt"] = "".join(line + "\n" for line in lines)
    describe(stats, en, corpus, query, judged, langs)
    files["stats.json"] = json.dumps(stats, indent=1, ensure_ascii=False) + "\n"
    write_dataset(out, files)
    return stats


def pick_queries(en, tr, langs, stats):
    """Families, their representatives, and the usable queries. en: {package: English Description}; tr: lang ->
    {package: Description} whose md5 matches. -> (representatives, {package: its family's representative},
    {lang: {representative: query text}})."""
    family = {}  # first paragraph -> packages, in name order
    for p in sorted(en):
        if en[p].paras:
            family.setdefault(en[p].paras[0], []).append(p)
    reps, rep_of = [], {}
    for members in family.values():
        r = min(members, key=lambda p: (-sum(p in tr[lang] for lang in langs), p))  # most translations, first name
        reps.append(r)
        rep_of.update({p: r for p in members})
    summary_count = Counter(norm(en[r].summary) for r in reps)
    items = [r for r in reps if en[r].summary and summary_count[norm(en[r].summary)] == 1]
    stats["english"].update(no_long_description=sum(not d.paras for d in en.values()), families=len(family),
                            in_larger_families=len(rep_of) - len(family), ambiguous_summary=len(reps) - len(items))
    query = {}
    for lang in langs:
        cand = {r: tr[lang][r].summary for r in items if r in tr[lang]}
        same = {r for r, t in cand.items() if norm(t) in ("", norm(en[r].summary))}  # empty or not translated
        count = Counter(norm(t) for r, t in cand.items() if r not in same)
        query[lang] = {r: t for r, t in cand.items() if r not in same and count[norm(t)] == 1}
        stats["languages"][lang].update(untranslated=len(same), duplicate=len(cand) - len(same) - len(query[lang]),
                                        usable=len(query[lang]))
    return reps, rep_of, query


def assign_splits(query, langs, zero_shot, cfg, rng):
    """-> {split: [(lang, package)]}: test, then dev (several languages of a package), then one training query per
    remaining package, in its rarest language, none in a zero-shot language. A package is in one split only."""
    items = sorted({r for lang in langs for r in query[lang]})
    rng.shuffle(items)
    taken, judged = set(), {s: [] for s in SPLITS}
    for split in ("test", "dev"):
        need = {lang: min(cfg[split], int(len(query[lang]) * SHARE[split])) for lang in langs}
        for r in items:
            ls = [lang for lang in langs if r in query[lang] and need[lang] > 0]
            if r not in taken and ls:
                taken.add(r)
                judged[split] += [(lang, r) for lang in ls]
                need.update({lang: need[lang] - 1 for lang in ls})
    rarity = {lang: (len(query[lang]), lang) for lang in langs}
    for r in items:
        ls = [lang for lang in langs if r in query[lang] and lang not in zero_shot]
        if r not in taken and ls and (cfg["train"] is None or len(judged["train"]) < cfg["train"]):
            judged["train"].append((min(ls, key=rarity.get), r))
    return judged


def unlabelled_text(texts, held, queries, limit, rng):
    """Sentences of the summaries and long descriptions in `texts` ({package: Description}, one language),
    deduplicated, in a seeded shuffle, at most `limit` (None: all), except those that are a sentence of a package in
    `held` (its own text, or the same sentence elsewhere) or contain one of `queries`, both casefolded.
    -> (lines, number dropped)."""
    held_sents = {norm(s) for p in held if p in texts
                  for t in [texts[p].summary, *texts[p].paras] for s in sentences(t)}
    lines = list(dict.fromkeys(s for p in sorted(texts) for t in [texts[p].summary, *texts[p].paras]
                               for s in sentences(t)))
    rng.shuffle(lines)
    index, keep, dropped = NeedleIndex({norm(q) for q in queries}), [], 0
    for s in lines:
        if limit is not None and len(keep) == limit:
            break
        if norm(s) in held_sents or index.found_in(norm(s)):
            dropped += 1
        else:
            keep.append(s)
    return keep, dropped


class NeedleIndex:
    """Tells whether a string contains one of `needles`: the needles bucketed by their first two characters, so a
    string of n characters costs n dictionary look-ups and a startswith per needle sharing a bucket."""

    def __init__(self, needles):
        self.short = {q for q in needles if len(q) == 1}
        self.buckets = {}
        for q in needles:
            if len(q) > 1:
                self.buckets.setdefault(q[:2], []).append(q)

    def found_in(self, s):
        return (any(c in self.short for c in s) or
                any(s.startswith(q, i) for i in range(len(s) - 1) for q in self.buckets.get(s[i:i + 2], ())))


def describe(stats, en, corpus, query, judged, langs):
    """Add counts per split and language, and how lexical the task is: the share of queries that share a
    (whitespace) word with their passage, or name their package, and of passages that name their package."""
    def names(p, text):  # the package name as a whole token (a trailing full stop is not part of it)
        return p in {t.rstrip(".") for t in re.findall(r"[\w.+-]+", text.casefold())}
    stats.update(passages=len(corpus), queries=sum(map(len, judged.values())),
                 passage_names_package=round(sum(names(p, " ".join(en[p].paras)) for p in corpus) / len(corpus), 3))
    for lang in langs:
        pairs = [(r, query[lang][r]) for s in SPLITS for ql, r in judged[s] if ql == lang]
        d = stats["languages"][lang]
        d.update({s: sum(ql == lang for ql, _ in judged[s]) for s in SPLITS})
        d["shares_word"] = round(sum(bool(set(norm(t).split()) & set(norm(" ".join(en[r].paras)).split()))
                                     for r, t in pairs) / max(1, len(pairs)), 3)
        d["query_names_package"] = round(sum(names(r, t) for r, t in pairs) / max(1, len(pairs)), 3)
