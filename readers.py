"""Reading the published files and writing the data set: the file handling every importer shares.

Reading: `read_bytes` (a whole plain, gzip, bzip2, xz or lz4 file, told by its magic bytes; DDTP's files),
`text_lines` and `json_lines` (a plain or gzip text file, streamed line by line; the benchmarks' files) and `field`
(a checked field of a JSON object). lz4 frames are decoded by `lz4_decompress` here (the format is small, and no new
dependency is needed); the other formats by the standard library.
Writing: `write_dataset` writes a data set's files into a fresh folder and renames it into place (a crash leaves no
half-written data set); `check_out` refuses an --out that holds anything; `rows_text` and `qrels_text` give the text of
a BEIR JSON-lines file and of a qrels file.
Every error is a DataError of one line, `file:line: problem` (line 0: the file as a whole).
"""
import bz2
import gzip
import json
import lzma
import os
import shutil
import struct

from data import DataError, json_object


# ----------------------------------------------------------------------------- reading

def read_bytes(path):
    """The content of a plain, gzip, bzip2, xz or lz4 file, told by its first bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        if raw[:3] == b"BZh":
            return bz2.decompress(raw)
        if raw[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(raw)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as e:
        raise DataError(f"{path}:0: cannot decompress ({e})") from None
    if raw[:4] == LZ4_MAGIC:
        return lz4_decompress(raw, path)
    return raw


LZ4_MAGIC = b"\x04\x22\x4d\x18"


def lz4_decompress(buf, path="<lz4>"):
    """Decode an lz4 frame file (one frame or several, skippable frames allowed); checksums are skipped, the
    content size is checked where the header gives one.

    A frame: magic, a descriptor (FLG: version 01, block checksum, content size and checksum, dictionary flags;
    BD: block size; the optional 8-byte content size and 4-byte dictionary id; a header checksum byte), then blocks,
    each a 4-byte size (top bit set: stored uncompressed), the block, an optional 4-byte checksum, until a size of 0;
    then an optional 4-byte content checksum. Blocks decode into one growing buffer, so matches may reach into
    earlier blocks (linked blocks, what Debian's files use).
    """
    out, i = bytearray(), 0
    try:
        while i < len(buf):
            magic, = struct.unpack_from("<I", buf, i)
            if 0x184D2A50 <= magic <= 0x184D2A5F:  # a skippable frame
                i += 8 + struct.unpack_from("<I", buf, i + 4)[0]
                continue
            if buf[i:i + 4] != LZ4_MAGIC:
                raise ValueError(f"bad frame magic at byte {i}")
            flg, start = buf[i + 4], len(out)
            if flg >> 6 != 1 or flg & 1:
                raise ValueError("unsupported frame version or dictionary")
            size = struct.unpack_from("<Q", buf, i + 6)[0] if flg & 8 else None
            i += 7 + (8 if flg & 8 else 0)
            while True:
                n, = struct.unpack_from("<I", buf, i)
                i += 4
                if n == 0:
                    break
                if n & 0x80000000:
                    out += buf[i:i + (n & 0x7FFFFFFF)]
                    n &= 0x7FFFFFFF
                else:
                    _lz4_block(buf, i, i + n, out)
                i += n + (4 if flg & 0x10 else 0)
            i += 4 if flg & 4 else 0
            if i > len(buf):
                raise ValueError("truncated frame")
            if size is not None and len(out) - start != size:
                raise ValueError(f"content size {size}, decoded {len(out) - start} bytes")
    except (ValueError, IndexError, struct.error) as e:
        raise DataError(f"{path}:0: corrupt lz4 data ({e})") from None
    return bytes(out)


def _length(src, i, n):
    """A length from a token nibble n: 15 means 'add the following bytes src[i:] until one is not 255' -> (length,
    the index after it)."""
    if n == 15:
        while src[i] == 255:
            n += 255
            i += 1
        n += src[i]
        i += 1
    return n, i


def _lz4_block(src, i, end, out):
    """Append the decoded lz4 block src[i:end] to out. Sequences: a token (high nibble: literal count, low nibble:
    match length - 4; 15 means 'add the following bytes until one is not 255'), the literals, a 2-byte little-endian
    offset back into out, the match length. The last sequence has literals only."""
    while True:
        token = src[i]
        i += 1
        n, i = _length(src, i, token >> 4)
        out += src[i:i + n]
        i += n
        if i >= end:
            if i > end:
                raise ValueError("literals run past the block")
            return
        offset = src[i] | src[i + 1] << 8
        i += 2
        m, i = _length(src, i, token & 15)
        m += 4
        if not 0 < offset <= len(out):
            raise ValueError(f"match offset {offset} out of range")
        s = len(out) - offset
        if m <= offset:
            out += out[s:s + m]
        else:  # the match overlaps its own output: a repeated pattern of `offset` bytes
            out += (out[s:] * (m // offset + 1))[:m]



def text_lines(path):
    """Yield (line number, line) of a UTF-8 text file, gzip-compressed or not, skipping blank lines; streamed."""
    if not os.path.isfile(path):
        raise DataError(f"{path}:0: file not found")
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    i = 0
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            for i, raw in enumerate(f, 1):
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.strip():
                    yield i, line
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}:{i + 1}: cannot read ({e})") from None


def json_lines(path):
    """Yield (line number, object) of a JSON-lines file (each line a JSON object)."""
    for i, line in text_lines(path):
        yield i, json_object(line, path, i)


def field(row, key, path, i, kind=str, optional=False):
    """row[key] checked to be of `kind` (str: non-empty); -> the value (None if optional and absent)."""
    v = row.get(key)
    if v is None and optional:
        return None
    if kind is str and isinstance(v, int) and not isinstance(v, bool) and key in ("id", "example_id"):
        v = str(v)  # ids written as JSON numbers
    if not isinstance(v, kind) or (kind is str and not v.strip()):
        want = "a non-empty string" if kind is str else f"a {kind.__name__}"
        raise DataError(f"{path}:{i}: missing or invalid field {key!r} (expected {want})")
    if kind is list and not all(isinstance(a, str) for a in v):
        raise DataError(f"{path}:{i}: field {key!r} must be a list of strings")
    return v


# ----------------------------------------------------------------------------- writing

def write_dataset(out, files):
    """Write {relative path: text} into a fresh folder beside `out`, fsync each file, then rename it to `out`: a
    crash leaves no half-written data set. A value may also be an iterable of strings (written as it is produced:
    a corpus streamed from a large file), or a function called when its turn comes, returning either (None: no file).
    On an error the fresh folder is removed."""
    tmp = f"{out.rstrip(os.sep)}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, text in files.items():
            text = text() if callable(text) else text
            if text is None:
                continue
            path = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.writelines([text] if isinstance(text, str) else text)
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(out):
        os.rmdir(out)  # empty, checked before
    os.replace(tmp, out)


def check_out(out):
    """Refuse an --out that exists and is not an empty folder (write_dataset renames onto an empty one only)."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise DataError(f"{out}:0: exists and is not an empty directory (--out)")


def rows_text(rows):
    """JSON-lines text of `rows` (dicts), one a line, non-ASCII characters written as they are."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def qrels_text(pairs):
    """BEIR qrels text of (qid, pid[, score]) pairs; None when there are none (no file)."""
    if not pairs:
        return None
    return "query-id\tcorpus-id\tscore\n" + "".join(f"{p[0]}\t{p[1]}\t{p[2] if len(p) > 2 else 1}\n" for p in pairs)
