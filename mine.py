"""Pseudo-pairs mined from unlabelled target-language text where BM25 and the dual-encoder agree (METHOD.md, choices).

    python mine.py --run out/tiny --data data/tiny --out data/tiny-mined       # mine, write a new data set
    python train.py --data data/tiny-mined --out out/tiny-mined               # train on it like on any data set

LEXMR ("Lexicon-Enhanced Self-Supervised Training for Multilingual Dense Retrieval", arXiv, March 2023; seed 004 of
this project) mines training pairs from unlabelled queries: a sparse and a dense retriever each rank the passages
for a sentence, and a pair is kept where both rank the passage high. Each retriever errs in its own way (BM25 on
words the sentence shares by chance, the DE on a language it reads badly), so where they agree the pair is more
often right than either alone. Here:

- the sentences are the lines of `unlabelled/<lang>.txt` of each query language but the pivot, read as queries by
  the run's warm DE (`de.pt`, or `--model`) and by BM25 over the run's tokens (the first max_len_q - 2 tokens, as
  every query is read); languages without training queries (zero-shot) are left out unless `--zero-shot`: a
  zero-shot column of a results table then stays zero-shot, comparable with the run on the original data set;
- a sentence is skipped when it has fewer than `--min-words` words (pieces of the tokenizer's pre-tokeniser that
  hold a letter or digit; a CJK character is one word), when it equals the text of a query of the data set
  (case and spacing aside: a dev/test query must not become a training query; a training query is already a
  pair) or an earlier sentence of its language;
- `agree`: the pair (sentence, p) is kept where p is the DE's highest-ranked passage within both top `--agree-k`
  lists (k = 1, the default: both retrievers' top-1 are p; BM25's list holds only passages sharing a token);
- the first `--per-lang` kept sentences of a language, in file order, become queries `mined-<lang>-<n>` with one
  relevant passage each in qrels/train.tsv.

`--out` is a new data set: the original's files (hard links, or copies across file systems; never written in
place by xqg), queries.jsonl and qrels/train.tsv with the mined rows appended, and mined.json (per language:
sentences tried, kept, kept share; where the data set says which passage each unlabelled line comes from,
`unlabelled/<lang>.pids` as the synthetic benchmark writes it, the precision of the kept pairs and how often each
retriever's top-1 alone is right). Written in a temp folder, then renamed: whole or absent. Deterministic.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch

import cli
import data
from encoded import EMBED_BATCH, EncodedData
from model import DualEncoder, pad_batch
from outdir import OutDir, Stop, atomic_write, difference, fingerprint, log


def agree(de_top, bm25_top, k=1):
    """The mined passage of each sentence: de_top, bm25_top [S, >= k] corpus rows, best first (-1: no passage)
    -> [S] the first passage of de_top[:, :k] that is also in bm25_top[:, :k], else -1."""
    de, bm = de_top[:, :k], bm25_top[:, :k]
    both = (de[:, :, None] == bm[:, None, :]).any(2) & (de >= 0)                 # [S, k] DE's j-th is in BM25's top k
    first = both.int().argmax(1, keepdim=True)                                     # [S, 1] the first such j (0 if none)
    return torch.where(both.any(1), de.gather(1, first).squeeze(1), -1)           # [S]


def norm(text):
    return " ".join(text.split()).casefold()


def sentences(lines, taken, min_words, words):
    """The lines to try as queries -> (their indices in lines, counts of the skipped): none with fewer than
    min_words words (`words(line)` counts them), none whose norm() is in `taken` or repeats an earlier line's."""
    keep, seen, skipped = [], set(), {"short": 0, "a_query": 0, "repeated": 0}
    for i, line in enumerate(lines):
        if words(line) < min_words:
            skipped["short"] += 1
        elif norm(line) in taken:
            skipped["a_query"] += 1
        elif norm(line) in seen:
            skipped["repeated"] += 1
        else:
            seen.add(norm(line))
            keep.append(i)
    return keep, skipped


def rankings(d, de, p, texts, max_len_q, k, log_every):
    """The top k corpus rows of each text read as a query, by the DE (p: its passage embeddings [N, C]) and by
    BM25 (-1 where a passage shares no token): [S, k] twice. Both read the query's first max_len_q - 2 tokens."""
    if not texts:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k, dtype=torch.long)
    toks = data.encode(d.tok, texts, max_len_q - 2)
    ids, mask = pad_batch([[data.Q] + t for t in toks])                                       # [S, Tq]
    de_top = d.chunked(log_every, "mine", len(texts), EMBED_BATCH,
                       lambda s: d.top_passages(d.embed(de, ids[s], mask[s]), p, k)[1])          # [S, k]
    return de_top, d.bm25_ranking(toks, k)


def truth(root, lang, n):
    """unlabelled/<lang>.pids: the passage id each unlabelled line comes from (aligned with the non-blank lines of
    <lang>.txt), or None where the data set does not say."""
    path = os.path.join(root, "unlabelled", f"{lang}.pids")
    if not os.path.exists(path):
        return None
    pids = [line.strip() for _, line in data._lines(path)]
    if len(pids) != n:
        raise data.DataError(f"{path}:0: {len(pids)} lines, but unlabelled/{lang}.txt has {n} sentences")
    return pids


def parse(argv):
    ap = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the output folder of a train.py run (its config.json, tokenizer)")
    ap.add_argument("--data", required=True, help="the data set to mine (BEIR layout with unlabelled/<lang>.txt)")
    ap.add_argument("--out", required=True, help="the new data set to write (must not exist)")
    ap.add_argument("--model", default="de.pt", help="the DE checkpoint of the run (default de.pt, the warm DE)")
    ap.add_argument("--per-lang", type=int, help="at most this many mined pairs per language (default: all)")
    ap.add_argument("--agree-k", type=int, default=1, help="keep p when it is within both top k (default 1)")
    ap.add_argument("--min-words", type=int, default=3, help="skip sentences with fewer words (default 3)")
    ap.add_argument("--zero-shot", action="store_true", help="also mine languages without training queries")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core)")
    ap.add_argument("--log-every", type=float, default=10, help="seconds between progress lines (default 10)")
    args = ap.parse_args(argv)
    for flag, lo in (("per_lang", 1), ("agree_k", 1), ("min_words", 1), ("threads", 1), ("log_every", 0)):
        if getattr(args, flag) is not None and not lo <= getattr(args, flag) < cli.INT_LIMIT:
            raise cli.FlagError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be in [{lo}, {cli.INT_LIMIT})")
    return args


def load_run(args):
    """The run's DE, tokenizer and settings, every file checked before anything is read."""
    if not os.path.isdir(args.run):
        raise Stop(f"{args.run}: {'not a folder' if os.path.exists(args.run) else 'not found'} (--run takes the "
                   "output folder of a train.py run)")
    run = OutDir(args.run, {"de.pt": "de", "tokenizer.json": "tokenizer"})
    for name, why in (("config.json", "--run takes the output folder of a train.py run"),
                      ("tokenizer.json", "--run takes the output folder of a train.py run"),
                      (args.model, "train.py's stage de makes de.pt; --model names another DE of the run")):
        if not os.path.isfile(run.path(name)):
            raise Stop(f"{run.path(name)}: not found ({why})")
    made = run.settings()
    if missing := [key for key in ("max_len_q", "max_len_p", "pivot") if key not in made]:
        raise Stop(f"{run.path('config.json')}: no {missing[0]!r} setting")
    return run.load_model(DualEncoder, args.model), run.load_tokenizer(), made, run


def mine(args):
    """Mine every language, write --out; -> mined.json's dict."""
    if os.path.exists(args.out):
        raise Stop(f"{args.out}: exists (--out names a new data set)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise Stop(f"{args.out}: no folder {os.path.dirname(os.path.abspath(args.out))} (--out)")
    if os.path.commonpath([os.path.abspath(args.out), os.path.abspath(args.data)]) == os.path.abspath(args.data):
        raise Stop(f"{args.out}: inside the data set {args.data} (--out names a new data set beside it)")
    de, tok, made, run = load_run(args)
    ds = data.load(args.data)
    if why := difference({"settings": {}, "data": run.read_json("config.json", "JSON").get("data", {})},
                         {"settings": {}, "data": fingerprint(args.data, {})["data"]}):
        log("mine", f"note: {why.replace('this folder was made', 'the run was trained')}")
    with_train = {ds.lang[q] for q in ds.qrels.get("train", {})}
    langs = [x for x in sorted(ds.unlabelled) if x != made["pivot"] and (args.zero_shot or x in with_train)]
    if not langs:
        raise Stop(f"{args.data}/unlabelled: no text in a language other than the pivot {made['pivot']!r}"
                   + ("" if args.zero_shot else " with training queries (--zero-shot: any)"))
    if clash := [q for q in ds.queries if q.startswith("mined-")]:
        raise Stop(f"{args.data}/queries.jsonl: query id {clash[0]!r} is taken (mined ids are mined-<lang>-<n>)")
    truths = {lang: truth(args.data, lang, len(ds.unlabelled[lang])) for lang in langs}  # None: not known
    d = EncodedData(ds, tok, made["max_len_q"], made["max_len_p"], made["pivot"])
    log("mine", f"{args.model}: embedding {len(ds.pids)} passages")
    p = d.embed_passages(de)                                                                  # [N, C]
    count = lambda t: sum(any(c.isalnum() for c in w) for w, _ in tok.pre_tokenizer.pre_tokenize_str(  # noqa: E731
        tok.normalizer.normalize_str(t)))
    taken, report, rows = {norm(t) for t in ds.queries.values()}, {}, []
    for lang in langs:
        lines = ds.unlabelled[lang]
        keep, skipped = sentences(lines, taken, args.min_words, count)
        log("mine", f"{lang}: {len(keep)} of {len(lines)} sentences, DE and BM25")
        k = min(args.agree_k, len(ds.pids))
        de_top, bm_top = rankings(d, de, p, [lines[i] for i in keep], made["max_len_q"], k, args.log_every)
        agreed = [(i, r) for i, r in zip(keep, agree(de_top, bm_top, k).tolist()) if r >= 0]
        kept = agreed[:args.per_lang]
        rows += [(f"mined-{lang}-{n}", lines[i], lang, ds.pids[r]) for n, (i, r) in enumerate(kept)]
        got = report[lang] = {"sentences": len(lines), "skipped": skipped, "tried": len(keep), "agreed": len(agreed),
                              "kept": len(kept), "kept_share": round(len(kept) / max(1, len(keep)), 4)}
        if (true := truths[lang]) is not None:  # the share of (line, corpus row) pairs that are right
            right = lambda pairs: round(sum(r >= 0 and true[i] == ds.pids[r] for i, r in pairs)  # noqa: E731
                                        / len(pairs), 4) if pairs else None
            got["truth"] = {"precision": right(kept), "de_top1": right(list(zip(keep, de_top[:, 0].tolist()))),
                            "bm25_top1": right(list(zip(keep, bm_top[:, 0].tolist())))}
        log("mine", f"{lang}: kept {len(kept)} of {len(keep)}"
            + (f", precision {got['truth']['precision']} (DE alone {got['truth']['de_top1']}, BM25 alone "
               f"{got['truth']['bm25_top1']})" if "truth" in got else ""))
    summary = {"run": args.run, "model": args.model, "data": args.data, "agree_k": args.agree_k,
               "min_words": args.min_words, "per_lang": args.per_lang, "zero_shot": args.zero_shot,
               "languages": report, "kept": len(rows)}
    write(args.data, args.out, rows, summary)
    return summary


def write(src, dst, rows, summary):
    """dst: every file of src (hard links, copies across file systems), queries.jsonl and qrels/train.tsv with
    `rows` (qid, text, lang, pid) appended, mined.json; built in a temp folder beside dst, then renamed."""
    tmp = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(dst)) + ".", suffix=".tmp",
                           dir=os.path.dirname(os.path.abspath(dst)))
    try:
        for folder, _, names in os.walk(src):
            os.makedirs(os.path.join(tmp, os.path.relpath(folder, src)), exist_ok=True)
            for name in names:
                a, b = os.path.join(folder, name), os.path.join(tmp, os.path.relpath(folder, src), name)
                try:
                    os.link(a, b)
                except OSError:
                    shutil.copyfile(a, b)
        def append(name, head, lines):  # a new file (the link removed, never written through), the original first
            path, old = os.path.join(tmp, name), head
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    old = f.read()
                os.remove(path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, old + ("" if not old or old.endswith("\n") else "\n") + "".join(lines))
        append("queries.jsonl", "", [json.dumps({"_id": q, "text": t, "lang": x}, ensure_ascii=False) + "\n"
                                     for q, t, x, _ in rows])
        append(os.path.join("qrels", "train.tsv"), "\t".join(data.HEADER) + "\n",
               [f"{q}\t{p}\t1\n" for q, *_, p in rows])
        atomic_write(os.path.join(tmp, "mined.json"), json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
        data.load(tmp)  # the new data set must load as any other does
        os.rename(tmp, dst)
    except OSError as e:
        raise Stop(f"{dst}: cannot write ({e.strerror}) (--out)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    """Every problem a user can cause ends as one line `error: ...` and exit status 1, nothing written."""
    try:
        args = parse(argv)
        if args.threads:
            torch.set_num_threads(args.threads)
        s = mine(args)
        print(f"wrote {args.out}: {s['kept']} mined pairs; " + ", ".join(
            f"{x} {r['kept']}/{r['tried']}" for x, r in s["languages"].items()))
    except (Stop, cli.FlagError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
