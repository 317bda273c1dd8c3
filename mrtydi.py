"""The Mr. TyDi and MIRACL importer: one language's published files -> the BEIR layout of data.py.

    python data.py import mrtydi --from mrtydi-v1.1-japanese --lang ja --out data/mrtydi-ja
    python data.py import mrtydi --from miracl-v1.0-ja --corpus miracl-corpus-v1.0-ja --lang ja --out data/miracl-ja
Add `--keep-passages N` for a CPU-sized corpus (see below). Every error is one line `file:line: problem`.

Mr. TyDi (castorini/mr.tydi) and MIRACL (project-miracl/miracl): monolingual, judged by people. --from is the unpacked
folder of one language: topics `qid<TAB>query` (Mr. TyDi `topic.<split>.tsv`, MIRACL
`topics/topics.miracl-v1.0-<lang>-<split>.tsv`), qrels `qid Q0 docid relevance` (`qrels.<split>.txt`, MIRACL
`qrels/qrels.miracl-v1.0-<lang>-<split>.tsv`; MIRACL's non-relevant judgements, 0, are kept as 0). The corpus
(--corpus: files or folders of `*.jsonl` / `*.jsonl.gz`; default `<from>/collection`) holds {"id", "contents"}
(Mr. TyDi) or {"docid", "title", "text"} (MIRACL). No answers. The passages are in the query language: train with
--pivot <lang>. --keep-passages N keeps every judged passage plus N others (seeded), in file order (benchmarks.Corpus).
"""
import json
import os
import re
import sys

from benchmarks import Corpus, passage_line
from data import SPLITS, DataError
from readers import check_out, field, json_lines, qrels_text, rows_text, text_lines, write_dataset


# ----------------------------------------------------------------------------- the corpus

def corpus_files(paths):
    """The *.jsonl / *.jsonl.gz files of `paths` (files, or folders read in name order)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, n) for n in os.listdir(p) if re.search(r"\.jsonl(\.gz)?$", n))
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise DataError(f"{p}:0: not found (--corpus)")
    if not out:
        raise DataError(f"{paths[0] if paths else '--corpus'}:0: no .jsonl or .jsonl.gz file")
    return out


def jsonl_passages(paths):
    """Yield (where, id, text, title) of Mr. TyDi ({"id", "contents"}) or MIRACL ({"docid", "title", "text"}) files."""
    for path in corpus_files(paths):
        for i, row in json_lines(path):
            key = "docid" if "docid" in row else "id"
            pid = field(row, key, path, i)
            text = field(row, "text" if "text" in row else "contents", path, i)
            yield f"{path}:{i}", pid, text, field(row, "title", path, i, optional=True) or ""


# ----------------------------------------------------------------------------- topics, qrels -> BEIR

def split_files(src):
    """{split: (topics path, qrels path)} found in src or src/topics, src/qrels (see the module docstring)."""
    if not os.path.isdir(src):
        raise DataError(f"{src}:0: not a directory (--from)")
    names = [os.path.join(d, n) for d in (src, os.path.join(src, "topics"), os.path.join(src, "qrels"))
             if os.path.isdir(d) for n in sorted(os.listdir(d))]
    found = {}
    for split in SPLITS:
        pick = lambda stem, exts: [p for p in names if os.path.basename(p).startswith(stem) and  # noqa: E731
                                   re.search(rf"[.-]{split}\.({exts})$", os.path.basename(p))]
        topics, qrels = pick("topic", "tsv"), pick("qrels", "txt|tsv")
        if len(topics) > 1 or len(qrels) > 1:
            raise DataError(f"{src}:0: several {split} files: {', '.join(topics + qrels)}")
        if qrels and not topics:
            raise DataError(f"{qrels[0]}:0: no topics file for its {split} split")
        if topics and qrels:
            found[split] = (topics[0], qrels[0])
    if not found:
        raise DataError(f"{src}:0: no topic.<split>.tsv with a qrels.<split>.txt (Mr. TyDi) nor topics/ and qrels/ "
                        f"files (MIRACL)")
    return found


def mrtydi(out, src, lang, corpus=None, keep=None, seed=0):
    """A Mr. TyDi or MIRACL language folder (and its corpus) -> the BEIR layout; -> stats."""
    check_out(out)
    queries, judged, stats = {}, {}, {"source": "mrtydi", "lang": lang, "keep_passages": keep, "seed": seed}
    for split, (tpath, qpath) in split_files(src).items():
        for i, line in text_lines(tpath):
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise DataError(f"{tpath}:{i}: expected 'qid<TAB>query'")
            if parts[0] in queries:
                raise DataError(f"{tpath}:{i}: query id {parts[0]!r} also at {queries[parts[0]][2]}")
            queries[parts[0]] = (parts[1], split, f"{tpath}:{i}")
        judged[split], first = [], {}
        for i, line in text_lines(qpath):
            parts = line.split()
            if len(parts) != 4 or not re.fullmatch(r"-?\d+", parts[3]):
                raise DataError(f"{qpath}:{i}: expected 'qid Q0 docid relevance' with an integer relevance")
            if queries.get(parts[0], (0, None))[1] != split:
                raise DataError(f"{qpath}:{i}: query {parts[0]!r} is not in {os.path.basename(tpath)}")
            if (parts[0], parts[2]) in first:
                raise DataError(f"{qpath}:{i}: ({parts[0]!r}, {parts[2]!r}) is judged twice (first at line "
                                f"{first[parts[0], parts[2]]})")
            first[parts[0], parts[2]] = i
            judged[split].append((parts[0], parts[2], int(parts[3]), f"{qpath}:{i}"))
    if not any(judged.values()):
        raise DataError(f"{src}:0: the qrels files hold no judgement")
    need = {p: where for pairs in judged.values() for _, p, _, where in pairs}
    docs = Corpus(keep, seed)

    def scan():
        for n, (where, pid, text, title) in enumerate(jsonl_passages(corpus or [os.path.join(src, "collection")])):
            docs.add(n, where, pid, text, title, must=pid in need)
            if keep is None:
                yield passage_line(pid, text, title)
        missing = [p for p in need if p not in docs.ids]
        if missing:
            raise DataError(f"{need[missing[0]]}: passage {missing[0]!r} is not in the corpus "
                            f"({len(missing)} judged passages missing)")
        if keep is not None:
            yield from (passage_line(pid, text, title) for _, pid, text, title in docs.kept())

    def stats_text():
        stats.update(passages=len(docs.ids) if keep is None else len(docs.kept()), passages_read=len(docs.ids),
                     queries={s: len({q for q, *_ in pairs}) for s, pairs in judged.items()},
                     judgements={s: len(pairs) for s, pairs in judged.items()})
        return json.dumps(stats, indent=1, ensure_ascii=False, sort_keys=True) + "\n"

    files = {"corpus.jsonl": scan(),
             "queries.jsonl": rows_text([{"_id": q, "text": t, "lang": lang} for q, (t, _, _) in queries.items()])}
    files.update({f"qrels/{s}.tsv": qrels_text([(q, p, r) for q, p, r, _ in pairs]) for s, pairs in judged.items()})
    files["stats.json"] = stats_text
    write_dataset(out, files)
    return stats


if __name__ == "__main__":
    sys.exit("run it as: python data.py import mrtydi ...")
