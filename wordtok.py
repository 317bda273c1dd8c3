"""NLTK's `word_tokenize`, as XOR-TyDi's official R@2kt / R@5kt evaluation applies it to each retrieved passage.

The official script (evals/eval_xor_retrieve.py in the AkariAsai/XORQA repository) counts its 2,000 / 5,000 tokens
with `nltk.tokenize.word_tokenize`, which splits the text into sentences with Punkt, then each sentence with
NLTKWordTokenizer. Both are restated here from NLTK 3.5 (Apache License 2.0; the release current when the script
was published in 2021), so the metric needs no NLTK at run time:

- `treebank(sentence)`: NLTKWordTokenizer's regular expressions, in NLTK 3.5's order. Later NLTK releases changed a
  few rare cases (3.6: `more'n`, `wanna` before the end, a quote before `n`, `''`; 3.10: en/em dashes split off,
  white space runs collapsed), so the test that compares with NLTK runs only under NLTK 3.5.
- `sentences(text, params)`: Punkt's decision procedure (candidate ends `[.?!]`, the first pass, the second pass
  with the orthographic, collocation and sentence-starter heuristics, the realignment of closing quotes and
  brackets). Punkt's English model is data learnt from a corpus (abbreviations, collocations, sentence starters,
  orthographic contexts) shipped with NLTK's data, not with NLTK. Without it, DEFAULT_PARAMS knows a list of common
  English abbreviations and nothing else, which can differ from the English model only at a period after a word
  that one of them takes for an abbreviation, after an initial, a number or '...', where the model's learnt word
  statistics decide (the difference: 'Inc.' against 'Inc' '.', one token more or less).
  For byte-exact numbers set XQG_PUNKT to the folder of NLTK's English model in tab form
  (`nltk_data/tokenizers/punkt_tab/english`: abbrev_types.txt, collocations.tab, sent_starters.txt,
  ortho_context.tab); `params()` then reads it.
"""
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache

# ----------------------------------------------------------------------------- Punkt

ORTHO_BEG_UC, ORTHO_MID_UC, ORTHO_UNK_UC, ORTHO_BEG_LC, ORTHO_MID_LC, ORTHO_UNK_LC = (1 << i for i in range(1, 7))
ORTHO_UC = ORTHO_BEG_UC | ORTHO_MID_UC | ORTHO_UNK_UC
ORTHO_LC = ORTHO_BEG_LC | ORTHO_MID_LC | ORTHO_UNK_LC


@dataclass(frozen=True)
class PunktParams:
    abbrevs: frozenset = frozenset()        # abbreviation types, lower case, without the final period ('mr', 'u.s')
    collocations: frozenset = frozenset()   # (type, next type) pairs across which a period never ends a sentence
    starters: frozenset = frozenset()       # frequent sentence starters, lower case
    ortho: dict = field(default_factory=dict)  # type -> ORTHO_* flags: the cases a word was seen in, and where


DEFAULT_PARAMS = PunktParams(abbrevs=frozenset("""
    mr mrs ms messrs dr prof rev hon gen col lt maj capt cmdr adm sgt cpl pvt gov sen rep pres supt insp
    st jr sr bros inc ltd co corp plc llc assn dept univ inst est approx ca cf vs al etc
    e.g i.e u.s u.k u.n u.s.a a.m p.m a.d b.c d.c n.y l.a no nos vol vols ed eds pp ch fig figs op repr trans
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun
    mt ft ave blvd rd hwy sq ala ariz ark calif colo conn del fla ga ill ind kan ky la md mass mich minn miss mo
    mont neb nev okla ore pa tenn tex va vt wash wis wyo""".split()))


def load_punkt(folder):
    """PunktParams from NLTK's tab form of a Punkt model (the four files of punkt_tab/<language>)."""
    def lines(name):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.rstrip("\n")]
    ortho = {}
    for line in lines("ortho_context.tab"):
        word, flags = line.split("\t")
        ortho[word] = int(flags)
    return PunktParams(frozenset(lines("abbrev_types.txt")),
                       frozenset(tuple(line.split("\t")) for line in lines("collocations.tab")),
                       frozenset(lines("sent_starters.txt")), ortho)


@lru_cache(maxsize=None)
def params():
    """The Punkt parameters word_tokenize uses: the model in $XQG_PUNKT if set, else DEFAULT_PARAMS."""
    folder = os.environ.get("XQG_PUNKT")
    return load_punkt(folder) if folder else DEFAULT_PARAMS


_NON_WORD = r"(?:[?!)\";}\]\*:@\'\({\[])"
_MULTI = r"(?:\-{2,}|\.{2,}|(?:\.\s){2,}\.)"
_PUNKT_WORD = re.compile(rf"({_MULTI}|(?=[^\(\"\`{{\[:;&\#\*@\)}}\]\-,])\S+?"
                         rf"(?=\s|$|{_NON_WORD}|{_MULTI}|,(?=$|\s|{_NON_WORD}|{_MULTI}))|\S)")
_CONTEXT = re.compile(rf"\S*[\.\?!](?=(?P<after_tok>{_NON_WORD}|\s+(?P<next_tok>\S+)))")
_REALIGN = re.compile(r'["\')\]}]+?(?:\s+|(?=--)|$)', re.MULTILINE)
_NUMERIC = re.compile(r"^-?[\.,]?\d[\d,\.-]*\.?$")
_INITIAL = re.compile(r"[^\W\d]\.$")
_ELLIPSIS = re.compile(r"\.\.+$")


def _no_period(typ):
    return typ[:-1] if len(typ) > 1 and typ[-1] == "." else typ


def _ortho_heuristic(tok, typ, p):
    """Punkt's guess whether `tok` (its type `typ`) starts a sentence: True, False or 'unknown'."""
    if tok in (";", ":", ",", ".", "!", "?"):
        return False
    ctx = p.ortho.get(typ, 0)
    if tok[0].isupper() and ctx & ORTHO_LC and not ctx & ORTHO_MID_UC:
        return True
    if tok[0].islower() and (ctx & ORTHO_UC or not ctx & ORTHO_BEG_LC):
        return False
    return "unknown"


def sentence_breaks(tokens, p):
    """Punkt's annotation of a token list -> [True where a sentence ends after the token]."""
    types = [_NUMERIC.sub("##number##", t.lower()) for t in tokens]
    brk, abbr, ell = [False] * len(tokens), [False] * len(tokens), [False] * len(tokens)
    for i, t in enumerate(tokens):  # first pass: by the token alone
        if t in (".", "?", "!"):
            brk[i] = True
        elif _ELLIPSIS.match(t):
            ell[i] = True
        elif t.endswith(".") and not t.endswith(".."):
            if t[:-1].lower() in p.abbrevs or t[:-1].lower().split("-")[-1] in p.abbrevs:
                abbr[i] = True
            else:
                brk[i] = True
    for i in range(len(tokens) - 1):  # second pass: by the next token (whose own decision is still its first pass)
        t, nxt = tokens[i], tokens[i + 1]
        if not t.endswith("."):
            continue
        typ = _no_period(types[i])
        next_typ = _no_period(types[i + 1]) if brk[i + 1] else types[i + 1]
        initial = bool(_INITIAL.match(t))
        if (typ, next_typ) in p.collocations:
            brk[i] = False
            continue
        if (abbr[i] or ell[i]) and not initial:
            starter = _ortho_heuristic(nxt, next_typ, p)
            if starter is True or (nxt[0].isupper() and next_typ in p.starters):
                brk[i] = True
                continue
        if initial or typ == "##number##":
            starter = _ortho_heuristic(nxt, next_typ, p)
            if starter is False or (starter == "unknown" and initial and nxt[0].isupper()
                                    and not p.ortho.get(next_typ, 0) & ORTHO_LC):
                brk[i] = False
    return brk


def _contains_break(context, p):
    tokens = [t for line in context.split("\n") for t in _PUNKT_WORD.findall(line)]
    return any(sentence_breaks(tokens, p)[:-1])


def sentences(text, p=None):
    """Punkt's sentences of text (NLTK's PunktSentenceTokenizer.tokenize with realigned boundaries)."""
    p = params() if p is None else p
    cuts, last = [], 0
    for m in _CONTEXT.finditer(text):
        if _contains_break(m.group() + m.group("after_tok"), p):
            cuts.append((last, m.end()))
            last = m.start("next_tok") if m.group("next_tok") else m.end()
    cuts.append((last, len(text.rstrip())))
    out, shift = [], 0
    for k, (s, e) in enumerate(cuts):  # a closing quote or bracket after the period belongs to the sentence
        s += shift
        m = _REALIGN.match(text[cuts[k + 1][0]:cuts[k + 1][1]]) if k + 1 < len(cuts) else None
        if m:
            out.append(text[s:cuts[k + 1][0] + len(m.group(0).rstrip())])
            shift = m.end()
        else:
            shift = 0
            if text[s:e]:
                out.append(text[s:e])
    return out


# ----------------------------------------------------------------------------- NLTKWordTokenizer (NLTK 3.5)

_C = re.compile
STARTING_QUOTES = [(_C("([«“‘„]|[`]+)"), r" \1 "), (_C(r"^\""), r"``"), (_C(r"(``)"), r" \1 "),
                   (_C(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` "), (_C(r"(?i)(\')(?!re|ve|ll|m|t|s|d)(\w)\b"), r"\1 \2")]
PUNCTUATION = [(_C(r'([^\.])(\.)([\]\)}>"\'' "»”’ " r"]*)\s*$"), r"\1 \2 \3 "), (_C(r"([:,])([^\d])"), r" \1 \2"),
               (_C(r"([:,])$"), r" \1 "), (_C(r"\.{2,}"), r" \g<0> "), (_C(r"[;@#$%&]"), r" \g<0> "),
               (_C(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "), (_C(r"[?!]"), r" \g<0> "),
               (_C(r"([^'])' "), r"\1 ' "), (_C(r"[*]"), r" \g<0> ")]
PARENS_BRACKETS = (_C(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> ")
DOUBLE_DASHES = (_C(r"--"), r" -- ")
ENDING_QUOTES = [(_C("([»”’])"), r" \1 "), (_C(r'"'), " '' "), (_C(r"(\S)(\'\')"), r"\1 \2 "),
                 (_C(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
                 (_C(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 ")]
CONTRACTIONS = [_C(p) for p in (r"(?i)\b(can)(?#X)(not)\b", r"(?i)\b(d)(?#X)('ye)\b", r"(?i)\b(gim)(?#X)(me)\b",
                                r"(?i)\b(gon)(?#X)(na)\b", r"(?i)\b(got)(?#X)(ta)\b", r"(?i)\b(lem)(?#X)(me)\b",
                                r"(?i)\b(mor)(?#X)('n)\b", r"(?i)\b(wan)(?#X)(na)\s",
                                r"(?i) ('t)(?#X)(is)\b", r"(?i) ('t)(?#X)(was)\b")]


def treebank(sentence):
    """NLTKWordTokenizer().tokenize(sentence) of NLTK 3.5: quotes, punctuation, brackets, dashes, contractions."""
    text = sentence
    for rx, sub in STARTING_QUOTES + PUNCTUATION + [PARENS_BRACKETS, DOUBLE_DASHES]:
        text = rx.sub(sub, text)
    text = " " + text + " "
    for rx, sub in ENDING_QUOTES:
        text = rx.sub(sub, text)
    for rx in CONTRACTIONS:
        text = rx.sub(r" \1 \2 ", text)
    return text.split()


@lru_cache(maxsize=4096)
def word_tokenize(text):
    """nltk.word_tokenize(text): Punkt sentences (params()), each split by `treebank`. -> a tuple of tokens."""
    return tuple(t for s in sentences(text) for t in treebank(s))
