"""importers.py and readers.py: lz4 frames, every compression, DDTP stanzas and their errors, and the DDTP data
set's promises (one passage per family, package-level splits, no held-out text in unlabelled, determinism), on small invented
Translation files written here."""
import bz2
import gzip
import hashlib
import lzma
import os
import random
import shutil
import subprocess
import sys

import pytest

import data
import importers
import readers
from data import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(test=10, dev=3, train=None, passages=None, unlabelled=None)


# ----------------------------------------------------------------------------- lz4

def frame(*blocks, flg=0x60, content_size=None):
    """An lz4 frame of raw blocks: (bytes, compressed?) each; FLG 0x60 = version 01, independent blocks."""
    head = bytes([flg | (8 if content_size is not None else 0), 0x40])
    head += content_size.to_bytes(8, "little") if content_size is not None else b""
    out = readers.LZ4_MAGIC + head + b"\x00"  # header checksum byte: not checked
    for raw, compressed in blocks:
        out += (len(raw) | (0 if compressed else 0x80000000)).to_bytes(4, "little") + raw
    return out + b"\x00\x00\x00\x00"


def test_lz4_hand_built_frames():
    # block 1: token 0x22 = 2 literals "ab", match of 2 + 4 = 6 bytes at offset 2 (overlapping: "ababab"), then a
    # last sequence of 1 literal "c"; block 2 stored as is. A skippable frame first, a second frame with a size.
    block = bytes([0x22]) + b"ab" + bytes([2, 0, 0x10]) + b"c"
    buf = (b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"junk"
           + frame((block, True), (b"xyz", False)) + frame((b"hi", False), content_size=2))
    assert readers.lz4_decompress(buf) == b"ababababcxyzhi"
    # long literal run (15 + 5 = 20) and long match (15 + 255 + 1 + 4 = 275 bytes at offset 1)
    lits = b"0123456789abcdefghij"
    block = bytes([0xFF, 5]) + lits + bytes([1, 0, 255, 1, 0x10]) + b"k"
    assert readers.lz4_decompress(frame((block, True))) == lits + b"j" * 275 + b"k"


@pytest.mark.parametrize("buf, problem", [
    (frame((b"hi", False))[:-6], "unpack_from requires"),                      # cut inside a block
    (frame((bytes([0x10]) + b"a" + bytes([9, 0]), True)), "match offset 9 out of range"),
    (frame((b"hi", False), content_size=3), "content size 3, decoded 2 bytes"),
    (b"\x04\x22\x4d\x18\xa0\x40\x00", "unsupported frame version"),
    (b"\x04\x22\x4d\x19", "bad frame magic at byte 0"),
])
def test_lz4_corrupt_data_is_one_line(buf, problem):
    with pytest.raises(DataError, match=rf"^x.lz4:0: corrupt lz4 data \(.*{problem}"):
        readers.lz4_decompress(buf, "x.lz4")


@pytest.mark.skipif(shutil.which("lz4") is None, reason="the lz4 program is not installed")
@pytest.mark.parametrize("flags", [[], ["-BD"], ["-B4", "-BD", "--content-size"], ["-BX", "-9"], ["-1", "--no-frame-crc"]])
def test_lz4_equals_the_lz4_program(tmp_path, flags):
    rng = random.Random(len(flags))
    words = [bytes(rng.choice(b"abcdefgh ") for _ in range(rng.randint(1, 12))) for _ in range(300)]
    raw = b"".join(rng.choice(words) for _ in range(60000)) + bytes(rng.randrange(256) for _ in range(5000))
    (tmp_path / "x").write_bytes(raw)
    subprocess.run(["lz4", "-q", "-f", *flags, str(tmp_path / "x"), str(tmp_path / "x.lz4")], check=True)
    assert readers.lz4_decompress((tmp_path / "x.lz4").read_bytes()) == raw


# ----------------------------------------------------------------------------- stanzas

def body(paras):
    """Long description lines: each paragraph's lines (split at \\n) with a leading space, ` .` between paragraphs."""
    return "".join(" .\n" * (i > 0) + "".join(f" {line}\n" for line in p.split("\n")) for i, p in enumerate(paras))


def md5_of(summary, paras):
    return hashlib.md5(f"{summary}\n{body(paras)}".encode()).hexdigest()


def stanza(package, lang, summary, paras, md5=None):
    """A stanza in the published format; md5 defaults to the one of this text (right for English)."""
    return f"Package: {package}\nDescription-md5: {md5 or md5_of(summary, paras)}\nDescription-{lang}: {summary}\n{body(paras)}"


HAND = (  # by hand: a trailing space in the summary, ` .` breaks, a verbatim `  .`, a no-break-space blank line
    "Package: frobnik\n"
    "Description-md5: {md5}\n"
    "Description-en: frobnicate widgets quickly \n"
    " Frobnik turns dull widgets into shiny\n"
    " ones.\n"
    " .\n"
    " Features:\n"
    "  * fast\n"
    "  .\n"
    "  * small\n"
    " \u00a0\n"
    " Last paragraph.\n"
    "\n"
    "Package: zorblat\n"
    "Description-md5: {md5b}\n"
    "Description-en: zorblat tool\n"
    " Zorblat does things.\n"
)


def hand_text():
    md5 = hashlib.md5("frobnicate widgets quickly \n Frobnik turns dull widgets into shiny\n ones.\n .\n Features:\n"
                      "  * fast\n  .\n  * small\n \u00a0\n Last paragraph.\n".encode()).hexdigest()
    md5b = hashlib.md5(b"zorblat tool\n Zorblat does things.\n").hexdigest()
    return HAND.format(md5=md5, md5b=md5b)


def test_read_stanzas_by_hand(tmp_path):
    path = tmp_path / "Translation-en"
    path.write_text(hand_text(), encoding="utf-8")
    a, b = importers.read_stanzas(str(path), "en", check_md5=True)
    assert (a.package, a.summary, a.line) == ("frobnik", "frobnicate widgets quickly", 1)
    assert a.paras == ["Frobnik turns dull widgets into shiny ones.", "Features: * fast * small", "Last paragraph."]
    assert (b.package, b.paras, b.line) == ("zorblat", ["Zorblat does things."], 14)


def test_cjk_lines_join_without_space():
    assert importers.join_lines(["古代戦争の", "リアルタイム戦略", "ゲーム 0 A.D.", "is  fun"]) == "古代戦争のリアルタイム戦略ゲーム 0 A.D. is fun"
    assert importers.sentences("Zorblat does things. It is fast!  Really? 速い。とても") == \
        ["Zorblat does things.", "It is fast!", "Really?", "速い。", "とても"]


GOOD = "Package: pp\nDescription-md5: " + "a" * 32 + "\nDescription-de: s\n x\n"
MALFORMED = [  # (file text, expected message after the path)
    (" x\n" + GOOD, ":1: continuation line outside a Description-de field"),
    ("Package: p\n x\n", ":2: continuation line outside a Description-de field"),
    (GOOD + "\nPackage q\n", ":6: expected 'Field: value' or a continuation line starting with a space"),
    (GOOD + "\nPackage: q\nDescription-de: s\n", ":6: stanza without a Description-md5 field"),
    (GOOD + "\nDescription-md5: " + "b" * 32 + "\nDescription-de: s\n", ":6: stanza without a Package field"),
    ("Package: p\nPackage: q\n", ":2: second Package field in one stanza"),
    ("Package: pp\nDescription-md5: " + "a" * 32 + "\nDescription-fr: s\n", ":3: field Description-fr in a Translation-de file"),
    ("Package: pp\nDescription-md5: abc\nDescription-de: s\n", ":2: Description-md5 is not 32 hex digits"),
    (GOOD.replace("Package: pp", "Package: Bad name"), ":1: 'Bad name' is not a Debian package name"),
    (b"Package: p\n\xff\n", ":0: not valid UTF-8"),
]


@pytest.mark.parametrize("text, message", MALFORMED)
def test_malformed_stanzas_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "Translation-de"
    (path.write_bytes if isinstance(text, bytes) else lambda t: path.write_text(t, encoding="utf-8"))(text)
    with pytest.raises(DataError) as e:
        importers.read_stanzas(str(path), "de")
    assert str(e.value).startswith(str(path) + message)


def test_english_md5_is_checked(tmp_path):
    path = tmp_path / "Translation-en"
    path.write_text(hand_text().replace("ones.", "one."), encoding="utf-8")
    with pytest.raises(DataError, match=r"Translation-en:1: Description-md5 does not match the description$"):
        importers.read_stanzas(str(path), "en", check_md5=True)


def test_compressions_and_file_names(tmp_path):
    text = hand_text().encode()
    lz4 = frame((text[:100], False), (text[100:], False))  # stored blocks; real compressed ones are tested above
    for name, blob in [("Translation-en", text), ("a_i18n_Translation-en.gz", gzip.compress(text)),
                       ("Translation-en.bz2", bz2.compress(text)), ("Translation-en.xz", lzma.compress(text)),
                       ("x_Translation-en.lz4", lz4)]:
        d = tmp_path / name
        d.mkdir()
        (d / name).write_bytes(blob)
        assert importers.read_language(str(d), "en")[0]["frobnik"].paras[0] == "Frobnik turns dull widgets into shiny ones."
    d = tmp_path / "lists"
    (d / "Translation-en.diff").mkdir(parents=True)  # apt's diff folders are not files
    (d / "m_i18n_Translation-pt%5fBR").write_text(GOOD.replace("-de", "-pt_BR"), encoding="utf-8")
    assert importers.translation_files(str(d), "pt_BR") == [str(d / "m_i18n_Translation-pt%5fBR")]
    with pytest.raises(DataError, match=r"lists:0: no Translation-en file"):
        importers.translation_files(str(d), "en")
    (d / "bad_Translation-de.xz").write_bytes(b"\xfd7zXZ\x00garbage")
    with pytest.raises(DataError, match=r"bad_Translation-de.xz:0: cannot decompress"):
        readers.read_bytes(str(d / "bad_Translation-de.xz"))


def test_two_files_of_one_language_merge_and_conflicts_drop(tmp_path):
    (tmp_path / "main_Translation-de").write_text(GOOD + "\n" + GOOD.replace("pp\n", "qq\n"), encoding="utf-8")
    (tmp_path / "updates_Translation-de").write_text(GOOD + "\n" + GOOD.replace("pp\n", "qq\n").replace(" x", " y"),
                                                     encoding="utf-8")
    found, conflicts = importers.read_language(str(tmp_path), "de")
    assert list(found) == ["pp"] and conflicts == 1


def test_needle_index_equals_slow_search():
    rng = random.Random(0)
    alphabet = "ab c語"
    for _ in range(300):
        needles = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 5))}
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert importers.NeedleIndex(needles).found_in(s) == any(q in s for q in needles), (needles, s)


# ----------------------------------------------------------------------------- the DDTP data set

DE = {"tool": "Werkzeug", "library": "Bibliothek", "game": "Spiel"}
RU = {"tool": "инструмент", "library": "библиотека", "game": "игра"}
JA = {"tool": "ツール", "library": "ライブラリ", "game": "ゲーム"}
KINDS = list(DE)


def write_ddtp(root, n=48):
    """Invented packages: family i is `pkg<i>` (a kind and a number), with a -dev sibling sharing its first paragraph
    when i % 4 == 0 and a -doc twin of the -dev when i % 8 == 0. Translations: de for all, ru for even i and every
    -dev, ja for i % 3 == 0 and the -dev of i % 8 == 0 (one translation more: it stands for its family unless
    i % 3 == 0). Traps: ru of i % 10 == 4 has a stale md5, de of pkg5 is not translated, pkg6 and pkg7 share an
    English summary, the ru summary of pkg20 is the one of pkg2."""
    en, tr = [], {"de": [], "ru": [], "ja": []}
    for i in range(n):
        kind = KINDS[i % 3]
        members = [(f"pkg{i}", "")] + ([(f"pkg{i}-dev", " (development files)")] if i % 4 == 0 else []) \
            + ([(f"pkg{i}-doc", " (development files)")] if i % 8 == 0 else [])
        for p, role in members:
            first = f"Zork{i} is a {kind} that counts to {i}.\nIt was written long ago."
            rest = [f"This package contains the{role or ' main program'}."] if role or i % 4 == 0 else []
            summary = "transitional package" if p in ("pkg6", "pkg7") else f"{kind} number {i}{role}"
            en.append(stanza(p, "en", summary, [first, *rest]))
            md5 = md5_of(summary, [first, *rest])
            tr["de"].append(stanza(p, "de", summary if p == "pkg5" else f"{DE[kind]} Nummer {i}{role and ' (Entwicklung)'}",
                                   [f"Zork{i} ist ein {DE[kind]}, das bis {i} zählt.\nEs ist alt."], md5))
            if i % 2 == 0 or p.endswith("-dev"):
                text = f"{RU[kind]} номер {2 if i == 20 else i}{role and ' (разработка)'}"
                tr["ru"].append(stanza(p, "ru", text, [f"Zork{i} — это {RU[kind]}, считающий до {i}."],
                                       "0" * 32 if i % 10 == 4 else md5))
            if i % 3 == 0 or (p.endswith("-dev") and i % 8 == 0):
                tr["ja"].append(stanza(p, "ja", f"{JA[kind]}{i}番{role and '（開発）'}",
                                       [f"Zork{i} は {i} まで数える\n{JA[kind]}です。"], md5))
    (root / "Translation-en").write_text("\n".join(en), encoding="utf-8")
    (root / "Translation-de.gz").write_bytes(gzip.compress("\n".join(tr["de"]).encode()))
    (root / "x_i18n_Translation-ru.xz").write_bytes(lzma.compress("\n".join(tr["ru"]).encode()))
    (root / "Translation-ja.lz4").write_bytes(frame(("\n".join(tr["ja"]).encode(), False)))
    return str(root)


@pytest.fixture
def tiny_size(monkeypatch):
    monkeypatch.setitem(importers.SIZES, "cpu", TINY)


@pytest.fixture
def made(tmp_path, tiny_size):
    (tmp_path / "src").mkdir()
    src = write_ddtp(tmp_path / "src")
    out = str(tmp_path / "out")
    stats = importers.ddtp(src, out, ["de", "ru", "ja"], ["ja"], "cpu", seed=0)
    return src, out, stats, data.load(out)


def test_ddtp_loads_and_checks(made, capsys):
    src, out, stats, ds = made
    assert data.main(["check", out]) == 0 and "languages: de ja ru" in capsys.readouterr().out
    assert all(t == "" for t in ds.titles) and set(ds.translations) == set(ds.queries)
    assert stats["passages"] == len(ds.pids) and stats["queries"] == len(ds.queries)
    for lang in ("de", "ru", "ja"):
        for s in data.SPLITS:
            assert stats["languages"][lang][s] == sum(ds.lang[q] == lang for q in ds.qrels.get(s, {}))


def test_ddtp_one_passage_per_family_and_the_traps(made):
    src, out, stats, ds = made
    # families 0, 8, 16, ... : the -dev (one more translation: ru) stands for the family; 4, 12, ...: the base
    assert "pkg8-dev" in ds.pids and not {"pkg8", "pkg8-doc", "pkg4-dev"} & set(ds.pids) and "pkg4" in ds.pids
    assert len(ds.pids) == 48 and len({t.split(".")[0] for t in ds.texts}) == 48  # one passage per first paragraph
    for split in ds.qrels.values():
        for q, rel in split.items():
            (pid, score), = rel.items()
            lang, pkg = q.split(":")
            assert pid == pkg and score == 1
            i = int(pkg[3:].split("-")[0])
            assert ds.translations[q].startswith(f"{KINDS[i % 3]} number {i}")
            assert not (lang == "ru" and i % 10 == 4)                       # stale md5
            assert not (lang == "de" and i == 5) and i not in (6, 7)        # untranslated; ambiguous English summary
            assert not (lang == "ru" and i in (2, 20))                      # one translated summary for two packages
    assert stats["english"]["ambiguous_summary"] == 2 and stats["languages"]["de"]["untranslated"] == 1
    assert stats["languages"]["ru"]["duplicate"] == 2 and stats["english"]["in_larger_families"] == 12 + 6


def test_ddtp_splits_by_package_and_training_not_parallel(made):
    src, out, stats, ds = made
    pkgs = {s: {q.split(":")[1] for q in ds.qrels[s]} for s in ds.qrels}
    assert not (pkgs["train"] & pkgs["dev"]) and not (pkgs["train"] & pkgs["test"]) and not (pkgs["dev"] & pkgs["test"])
    assert len(pkgs["train"]) == len(ds.qrels["train"])                       # one training query per package
    assert not any(ds.lang[q] == "ja" for q in ds.qrels["train"])             # zero-shot
    assert set(ds.pids[:len(pkgs["train"])]) != pkgs["train"] and len(ds.pids) == 48  # rows not in split order
    for lang, n in (("de", 10), ("ru", 10), ("ja", 10)):                     # min(10, half of the usable queries)
        assert stats["languages"][lang]["test"] == min(n, stats["languages"][lang]["usable"] // 2)
    # a training package takes its rarest language: ru (fewer usable than de) wherever its ru summary is usable
    assert stats["languages"]["ru"]["usable"] < stats["languages"]["de"]["usable"]
    ru = importers.read_language(src, "ru")[0]
    for q in ds.qrels["train"]:
        pkg = q.split(":")[1]
        i = int(pkg[3:].split("-")[0])
        assert ds.lang[q] == ("ru" if pkg in ru and i % 10 != 4 and i not in (2, 20) else "de"), pkg


def test_ddtp_unlabelled_never_holds_held_out_text(made):
    src, out, stats, ds = made
    held = {q.split(":")[1] for s in ("dev", "test") for q in ds.qrels[s]}
    held_families = {int(p[3:].split("-")[0]) for p in held}
    assert ds.unlabelled["de"] and ds.unlabelled["ru"] and ds.unlabelled["en"]
    for lang, lines in ds.unlabelled.items():
        found = importers.read_language(src, lang)[0]
        bad = [importers.norm(ds.queries[q] if lang != "en" else ds.translations[q])
               for s in ("dev", "test") for q in ds.qrels[s] if ds.lang[q] == lang or lang == "en"]
        bad_sents = {importers.norm(x) for p, d in found.items() if int(p[3:].split("-")[0]) in held_families
                     for t in [d.summary, *d.paras] for x in importers.sentences(t)}
        for line in lines:
            assert not any(b in importers.norm(line) for b in bad), (lang, line)
            assert importers.norm(line) not in bad_sents, (lang, line)
    # and the text of training packages is there: the filters do not drop everything
    assert any(ds.queries[q] in ds.unlabelled[ds.lang[q]] for q in ds.qrels["train"])


def test_ddtp_deterministic_and_seeded(tmp_path, tiny_size):
    (tmp_path / "src").mkdir()
    src = write_ddtp(tmp_path / "src")
    outs = [str(tmp_path / name) for name in ("a", "b", "c")]
    for out, seed in zip(outs, (0, 0, 1)):
        importers.ddtp(src, out, ["de", "ru", "ja"], [], "cpu", seed)
    read = lambda out, name: open(os.path.join(out, name), "rb").read()  # noqa: E731
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "unlabelled/de.txt", "stats.json"):
        assert read(outs[0], name) == read(outs[1], name)
    assert read(outs[0], "qrels/test.tsv") != read(outs[2], "qrels/test.tsv")


def test_ddtp_errors(tmp_path, tiny_size):
    (tmp_path / "src").mkdir()
    src = write_ddtp(tmp_path / "src", n=12)
    for langs, zero, message in [(["de", "xx"], [], r"src:0: no Translation-xx file"),
                                 (["de", "en"], [], r"^--langs: need distinct query languages other than 'en'"),
                                 (["de"], ["ru"], r"^--zero-shot: ru not in --langs$")]:
        with pytest.raises(DataError, match=message):
            importers.ddtp(src, str(tmp_path / "out"), langs, zero)
        assert not os.path.exists(tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(DataError, match=r"full:0: exists and is not an empty directory \(--out\)$"):
        importers.ddtp(src, str(tmp_path / "full"), ["de"])


def test_import_cli_one_line_error_and_success(tmp_path):
    (tmp_path / "src").mkdir()
    src = write_ddtp(tmp_path / "src", n=12)
    with open(tmp_path / "src" / "Translation-de.gz", "wb") as f:
        f.write(gzip.compress(b"Package: p\nno colon here\n"))
    cmd = [sys.executable, "data.py", "import", "ddtp", "--from", src, "--out", str(tmp_path / "out")]
    r = subprocess.run(cmd + ["--langs", "de,ru"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {src}/Translation-de.gz:2: expected 'Field: value'")
    assert not os.path.exists(tmp_path / "out")
    r = subprocess.run(cmd + ["--langs", "ru", "--size", "full"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith(f"wrote {tmp_path / 'out'}: 12 passages"), r.stderr
    assert data.load(str(tmp_path / "out")).languages() == ["ru"]
