"""A synthetic multilingual retrieval benchmark, small enough to train on a CPU in minutes.

    python data.py synth --out data/tiny --size tiny --seed 0

No real cross-lingual data set can be downloaded here, so this file invents one whose structure makes the method's
two claims measurable: a query-generator teacher needs fewer labels and weaker negatives than a cross-encoder, and
aligning languages helps most where a language has few training queries.

The world. Invented entities of four types (person, city, company, book), each with four typed facts
(person: birthplace, birth year, occupation, employer; city: country, founding year, product, river; company:
founding year, headquarters, founder, industry; book: author, publication year, genre, setting). Values are other
entities (so names recur across passages), years, or words from small closed sets. Persons share surnames, so a name
token alone does not identify a person.

The passages (pivot language, English words, invented names). Each entity gets two or three "fact" passages, every
fact stated in exactly one of them with one of several paraphrased templates, plus one "profile" passage that states
no fact. All passages of an entity carry its name as title. A passage is relevant to a question iff it states the
asked fact of that entity, so the entity's other passages are natural hard negatives: they share the title and the
name with the question, and a lexical matcher ranks them high. Some sentences mention a second entity (a friend, a
rival), which puts names where they do not answer anything. Templates for different relations share words ("born in"
states both a birthplace and a birth year), so the relation must be read, not guessed from one word.

The queries. Each asked fact gets one question (no fact is asked twice, so no two queries are parallel), written
first in the pivot form, then rendered into one of five invented query languages by deterministic rules: a lexicon
(invented words, some languages with cognates of the English word), a word order, morphology (a case suffix on
names, a question particle), and noise (synonyms, dropped words). Names stay recognisable in the Latin-script
languages (sometimes inflected or respelt), so lexical matching works partly, as in real CLIR. `qd` writes in
Cyrillic with transliterated names, `qe` in CJK characters with no spaces between words: they share no token with
the passages, and lexical matching fails completely. Years are written in digits everywhere, as in real text.

Uneven supervision: `qa` and `qb` are high-resource, `qc` and `qd` low-resource (a tenth of `qa`'s training
queries or less), `qe` has none (zero-shot); dev and test hold every language, in `tiny` 100 queries each per
language (train: 1,000 per high-resource, 80 per low-resource language). With 100 queries a success rate near 0.5
has a standard error of 0.05, and a paired difference between two systems has one of sqrt(d / 100), d the share of
queries on which they disagree (0.03 for d = 0.1, 0.045 for d = 0.2): a difference of 0.05 within a language stands
out from the noise when the systems disagree on few queries, and only across seeds or languages otherwise.
`stats.json` records the queries per split and language. Beside the qrels: `answers.jsonl` (the value of the asked
fact, for R@kt) and `translations.jsonl` (each query's pivot form: an oracle translator, used only by the translation
baselines).

Unlabelled text (`unlabelled/<lang>.txt`, for pre-training): monolingual sentences in every language, the pivot
included, not parallel across languages. The pivot file states random facts; each query language's file holds 70 %
statements of random facts and 30 % questions, rendered like the queries. No line asks a dev or test question:
questions are drawn only from facts that no dev or test query asks (training facts and facts no query asks), so
pre-training can read neither a held-out query's text nor any other question about its fact (another template,
another language, the pivot). A line that still contains a dev or test query's text by chance (a query that lost a
word can be part of a sentence: 'employed X', from 'who employed X', is in 'V employed X for many years') is drawn
again. Statements of held-out facts stay, in every language: every fact is already stated in the corpus, which every
system reads; the task is to find that passage, not to learn the value; statements in a query language are the text
a real pre-training corpus holds about the facts a benchmark asks (Wikipedia in every language); and leaving
held-out facts out would itself mark which facts are asked.

Beside each `unlabelled/<lang>.txt`, `<lang>.pids` names, line by line, the passage that states the fact the line
states or asks: the truth against which mine.py measures the precision of the pseudo-pairs it mines (data.load
does not read it).

Language codes `qa`..`qe` come from the ISO 639 range reserved for private use, so they never collide with a real
language; the pivot is `en`.
"""
import json
import os
import random
from dataclasses import dataclass

# ----------------------------------------------------------------------------- the world

TYPES = {  # entity type -> its relations, each (name, value kind)
    "person": [("birthplace", "city"), ("birth_year", "year"), ("occupation", "occupation"), ("employer", "company")],
    "city": [("country", "country"), ("founded", "year"), ("product", "product"), ("river", "river")],
    "company": [("founded", "year"), ("headquarters", "city"), ("founder", "person"), ("industry", "industry")],
    "book": [("author", "person"), ("published", "year"), ("genre", "genre"), ("setting", "city")],
}
WORDS = {  # closed value sets, pivot words
    "occupation": "farmer painter sailor teacher doctor baker weaver miner soldier singer lawyer potter".split(),
    "product": "wine silk glass salt wool cheese paper copper tea honey".split(),
    "industry": "steel shipping software textiles mining banking printing chemicals".split(),
    "genre": "mystery romance adventure poetry history satire fantasy".split(),
}
# Pivot question templates per (type, relation); {e} is the entity's name.
QUESTIONS = {
    ("person", "birthplace"): ["where was {e} born", "in which city was {e} born", "what is the birthplace of {e}"],
    ("person", "birth_year"): ["when was {e} born", "in what year was {e} born"],
    ("person", "occupation"): ["what was the profession of {e}", "what did {e} work as"],
    ("person", "employer"): ["which company did {e} work for", "who employed {e}"],
    ("city", "country"): ["in which country is {e}", "which country is {e} located in"],
    ("city", "founded"): ["when was the city {e} founded", "in what year was {e} founded"],
    ("city", "product"): ["what is {e} known for", "what does the city {e} make"],
    ("city", "river"): ["which river flows through {e}", "on which river does {e} stand"],
    ("company", "founded"): ["when was the company {e} founded", "in what year was {e} established"],
    ("company", "headquarters"): ["where is {e} based", "in which city is the company {e} based"],
    ("company", "founder"): ["who founded {e}", "who was the founder of {e}"],
    ("company", "industry"): ["what does {e} produce", "in which industry is {e} active"],
    ("book", "author"): ["who wrote {e}", "who is the author of the book {e}"],
    ("book", "published"): ["when was {e} published", "in what year was the book {e} published"],
    ("book", "genre"): ["what kind of book is {e}", "what genre is the book {e}"],
    ("book", "setting"): ["where is the book {e} set", "in which city does {e} take place"],
}
# Pivot statement templates; {e} entity, {v} value. Several paraphrases, deliberately sharing words across relations.
FACTS = {
    ("person", "birthplace"): ["{e} was born in {v} .", "{v} is the birthplace of {e} .", "{e} , a native of {v} , grew up there ."],
    ("person", "birth_year"): ["{e} was born in {v} .", "born in {v} , {e} grew up in a large family ."],
    ("person", "occupation"): ["{e} worked as a {v} .", "{e} was a {v} by profession .", "as a young {v} , {e} travelled widely ."],
    ("person", "employer"): ["{e} worked for {v} .", "{v} employed {e} for many years ."],
    ("city", "country"): ["{e} is a city in {v} .", "{e} lies in the north of {v} ."],
    ("city", "founded"): ["{e} was founded in {v} .", "the city of {e} was established in {v} ."],
    ("city", "product"): ["{e} is known for its {v} .", "the {v} of {e} is sold across the region ."],
    ("city", "river"): ["the river {v} flows through {e} .", "{e} stands on the banks of the {v} ."],
    ("company", "founded"): ["{e} was founded in {v} .", "the company {e} was established in {v} ."],
    ("company", "headquarters"): ["{e} is based in {v} .", "{e} has its headquarters in {v} ."],
    ("company", "founder"): ["{e} was founded by {v} .", "{v} started {e} with a small loan ."],
    ("company", "industry"): ["{e} works in {v} .", "{e} is a leading name in {v} ."],
    ("book", "author"): ["{e} was written by {v} .", "{v} wrote {e} ."],
    ("book", "published"): ["{e} was published in {v} .", "{e} first appeared in {v} ."],
    ("book", "genre"): ["{e} is a work of {v} .", "critics describe {e} as {v} ."],
    ("book", "setting"): ["{e} is set in {v} .", "the story of {e} takes place in {v} ."],
}
FILLER = {  # sentences that state no fact; {e} the entity, {o} another entity of any type
    "person": ["{e} is remembered by many .", "{e} was a close friend of {o} .", "little is known about the early life of {e} .", "{e} often wrote letters to {o} ."],
    "city": ["{e} has a busy market .", "{e} is often compared with {o} .", "visitors to {e} praise its old streets .", "{e} grew quickly in the last century ."],
    "company": ["{e} employs many people .", "{e} competes with {o} .", "the offices of {e} are modern .", "{e} was once a small workshop ."],
    "book": ["{e} is still widely read .", "{e} was compared with {o} by critics .", "{e} has been reprinted many times .", "readers of {e} often recommend {o} ."],
}
CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
SYLLABLES = [c + v for c in CONSONANTS for v in VOWELS]  # 70 syllables; names and invented words are built from them


@dataclass
class Lang:
    """How pivot questions are rendered in one invented language."""
    code: str
    resource: str        # high | low | zero: how many training queries it gets
    script: str          # latin | cyrillic | cjk
    order: str           # keep | name_first | reverse: word order of the question
    cognate: float       # share of the lexicon that is a respelt English word (lexical overlap with passages)
    synonym: float       # share of words with a second form, picked at random per query
    drop: float          # probability that a non-name word is dropped
    name_suffix: str     # case ending on names ('' = none)
    particle: str        # question particle appended ('' = none)
    respell: dict        # letter substitutions applied to names (Latin scripts)


LANGS = [
    Lang("qa", "high", "latin", "keep", 0.5, 0.2, 0.05, "", "", {}),
    Lang("qb", "high", "latin", "name_first", 0.15, 0.3, 0.10, "en", "ka", {}),
    Lang("qc", "low", "latin", "reverse", 0.0, 0.4, 0.10, "u", "", {"v": "w", "k": "c", "z": "s"}),
    Lang("qd", "low", "cyrillic", "name_first", 0.0, 0.3, 0.10, "ом", "ли", {}),
    Lang("qe", "zero", "cjk", "name_first", 0.0, 0.3, 0.05, "", "吗", {}),
]
PIVOT = "en"
SIZES = {  # entities per type, train queries per resource level, dev/test queries per language
    "micro": dict(entities=20, high=80, low=8, zero=0, dev=5, test=10),  # for the tests: seconds, not minutes
    "tiny": dict(entities=200, high=1000, low=80, zero=0, dev=100, test=100),  # 3,200 facts, 3,160 asked
    "small": dict(entities=1800, high=10000, low=800, zero=0, dev=200, test=500),
}
CYRILLIC = dict(zip("abdefgiklmnoprstuvz", "абдефгиклмнопрстувз"))
CJK_BASE = 0x4E00  # CJK unified ideographs: names use the first 70, lexicon words the ones after


def _cjk(i):
    return chr(CJK_BASE + i)


class World:
    """Entities, facts and passages of one seed; every random draw comes from one seeded generator."""

    def __init__(self, n_per_type, rng):
        self.rng = rng
        used = set()

        def new_name(n_syl):
            while True:
                syl = tuple(rng.choice(SYLLABLES) for _ in range(n_syl))
                if syl not in used:
                    used.add(syl)
                    return syl

        surnames = [new_name(3) for _ in range(max(2, n_per_type // 4))]  # about four persons per surname
        self.names = {}  # entity id -> list of words, each a tuple of syllables
        self.type = {}
        for t in TYPES:
            for i in range(n_per_type):
                e = f"{t}{i}"
                self.type[e] = t
                self.names[e] = [new_name(2), rng.choice(surnames)] if t == "person" else [new_name(rng.choice([2, 3]))]
        self.countries = [[new_name(3)] for _ in range(10)]
        self.rivers = [[new_name(2)] for _ in range(30)]
        by_type = {t: [e for e in self.type if self.type[e] == t] for t in TYPES}
        self.facts = {}  # (entity, relation) -> value: ("name", words) | ("word", w) | ("year", y)
        for e, t in self.type.items():
            for rel, kind in TYPES[t]:
                if kind in by_type:
                    v = ("name", self.names[rng.choice(by_type[kind])])
                elif kind == "country":
                    v = ("name", rng.choice(self.countries))
                elif kind == "river":
                    v = ("name", rng.choice(self.rivers))
                elif kind == "year":
                    v = ("year", str(rng.randint(1700, 2000)))
                else:
                    v = ("word", rng.choice(WORDS[kind]))
                self.facts[e, rel] = v
        self.entities = list(self.type)

    def passages(self):
        """-> list of (entity, relations stated, text): fact passages and one profile passage per entity."""
        rng, out = self.rng, []
        for e in self.entities:
            rels = [r for r, _ in TYPES[self.type[e]]]
            rng.shuffle(rels)
            cut = sorted(rng.sample(range(1, len(rels)), rng.choice([1, 2])))  # 2 or 3 fact passages
            for group in [rels[a:b] for a, b in zip([0] + cut, cut + [len(rels)])]:
                sents = [self.statement(e, r) for r in group]
                if rng.random() < 0.6:
                    sents.insert(rng.randrange(len(sents) + 1), self.filler(e))
                out.append((e, group, " ".join(sents)))
            out.append((e, [], " ".join(self.filler(e) for _ in range(rng.choice([2, 3])))))
        return out

    def statement(self, e, rel, templates=FACTS):
        tpl = self.rng.choice(templates[self.type[e], rel])
        return tpl.format(e=surface(self.names[e]), v=value_surface(self.facts[e, rel]))

    def filler(self, e):
        o = self.rng.choice(self.entities)
        return self.rng.choice(FILLER[self.type[e]]).format(e=surface(self.names[e]), o=surface(self.names[o]))

    def question(self, e, rel):
        return self.rng.choice(QUESTIONS[self.type[e], rel]).format(e=surface(self.names[e]))


def surface(name):
    """Pivot (English) spelling of a name: words of capitalised syllables, 'Velo Kastani'."""
    return " ".join("".join(w).capitalize() for w in name)


def value_surface(v):
    return surface(v[1]) if v[0] == "name" else v[1]


# ----------------------------------------------------------------------------- rendering into a query language

class Renderer:
    """Turns a pivot sentence into language `lang` by lexicon, word order, morphology and noise.

    The lexicon is drawn once per language from the language's own generator, so it is the same for every
    sentence; the noise (synonym choice, dropped words) is drawn per sentence from the shared generator.
    """

    def __init__(self, lang, world, seed):
        self.lang, self.world = lang, world
        self.lex_rng = random.Random(f"{seed}-{lang.code}")
        self.lexicon = {}
        self.cjk_next = 100  # lexicon characters follow the 70 name characters
        # names: syllable tuple -> rendered word; the reverse map lets rendering find names in a pivot sentence
        self.name_of = {}
        for name in list(world.names.values()) + world.countries + world.rivers:
            for w in name:
                self.name_of["".join(w).capitalize()] = w

    def word(self, w):
        """Lexicon entry of pivot word w: one or two forms in this language."""
        if w not in self.lexicon:
            r, lang = self.lex_rng, self.lang
            n_forms = 2 if r.random() < lang.synonym else 1
            forms = []
            for _ in range(n_forms):
                if lang.script == "latin" and r.random() < lang.cognate:
                    forms.append(w[:-1] + r.choice(VOWELS) if len(w) > 3 else w + r.choice(VOWELS))
                elif lang.script == "cjk":
                    forms.append("".join(_cjk(self.cjk_next + r.randrange(2000)) for _ in range(r.choice([1, 2]))))
                else:
                    forms.append(self.script("".join(r.choice(SYLLABLES) for _ in range(r.choice([1, 2, 3])))))
            self.lexicon[w] = forms
        return self.lexicon[w]

    def script(self, latin):
        if self.lang.script == "cyrillic":
            return "".join(CYRILLIC.get(c, c) for c in latin)
        return latin

    def name(self, syllables):
        lang = self.lang
        if lang.script == "cjk":
            return "".join(_cjk(SYLLABLES.index(s)) for s in syllables)
        word = "".join(syllables)
        word = "".join(lang.respell.get(c, c) for c in word)
        return self.script(word).capitalize()

    def render(self, sentence, rng, inflect=True):
        """Pivot sentence (space-separated words, names capitalised) -> (text in this language)."""
        lang, words = self.lang, [w for w in sentence.split() if w not in ".,"]
        units = []  # (is_name, text)
        for w in words:
            if w in self.name_of:
                units.append((True, self.name(self.name_of[w])))
            elif w.isdigit():
                units.append((True, w))  # numbers are kept like names
            elif rng.random() >= lang.drop:
                units.append((False, rng.choice(self.word(w.lower()))))
        if inflect and lang.name_suffix:  # the case ending goes on the last word of each name
            last = [n and not t.isdigit() and (i + 1 == len(units) or not units[i + 1][0]) for i, (n, t) in enumerate(units)]
            units = [(n, t + lang.name_suffix if end else t) for (n, t), end in zip(units, last)]
        names = [t for n, t in units if n]
        other = [t for n, t in units if not n]
        if lang.order == "name_first":
            units = names + other
        elif lang.order == "reverse":
            units = other[::-1] + names
        else:
            units = [t for _, t in units]
        if lang.particle:
            units.append(lang.particle)
        return ("" if lang.script == "cjk" else " ").join(units)


# ----------------------------------------------------------------------------- the benchmark files

def generate(out, size="tiny", seed=0):
    """Write the benchmark under `out` (BEIR layout plus answers, translations, unlabelled text and stats.json)."""
    cfg, rng = SIZES[size], random.Random(seed)
    world = World(cfg["entities"], rng)
    corpus, stated_in = [], {}
    for i, (e, rels, text) in enumerate(world.passages()):
        pid = f"p{i}"
        corpus.append({"_id": pid, "title": surface(world.names[e]), "text": text})
        for r in rels:
            stated_in[e, r] = pid
    renderers = {lang.code: Renderer(lang, world, seed) for lang in LANGS}
    facts = sorted(stated_in)
    rng.shuffle(facts)
    want = [(split, lang, cfg[lang.resource] if split == "train" else cfg[split])
            for split in ("test", "dev", "train") for lang in LANGS]
    if sum(n for _, _, n in want) > len(facts):
        raise ValueError(f"size {size!r}: {len(facts)} facts cannot hold {sum(n for *_, n in want)} queries")
    queries, qrels, answers, translations = [], {"train": [], "dev": [], "test": []}, [], []
    held_out, held_out_texts = set(), []  # facts asked by dev/test queries, and those queries' texts
    for split, lang, n in want:
        for e, rel in facts[:n]:
            qid = f"{split}-{lang.code}-{len(qrels[split])}"
            pivot = world.question(e, rel)
            queries.append({"_id": qid, "text": renderers[lang.code].render(pivot, rng), "lang": lang.code})
            qrels[split].append((qid, stated_in[e, rel]))
            answers.append({"_id": qid, "answers": [value_surface(world.facts[e, rel])]})
            translations.append({"_id": qid, "text": pivot})
            if split != "train":
                held_out.add((e, rel))
                held_out_texts.append(queries[-1]["text"])
        facts = facts[n:]
    unlabelled = unlabelled_text(world, renderers, held_out, held_out_texts, cfg["test"] * 20, rng)

    os.makedirs(os.path.join(out, "qrels"), exist_ok=True)
    os.makedirs(os.path.join(out, "unlabelled"), exist_ok=True)
    _write_jsonl(os.path.join(out, "corpus.jsonl"), corpus)
    _write_jsonl(os.path.join(out, "queries.jsonl"), queries)
    _write_jsonl(os.path.join(out, "answers.jsonl"), answers)
    _write_jsonl(os.path.join(out, "translations.jsonl"), translations)
    for split, rows in qrels.items():
        _write(os.path.join(out, "qrels", f"{split}.tsv"),
               "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{p}\t1\n" for q, p in rows))
    for code, lines in unlabelled.items():
        _write(os.path.join(out, "unlabelled", f"{code}.txt"), "".join(line + "\n" for _, line in lines))
        _write(os.path.join(out, "unlabelled", f"{code}.pids"), "".join(stated_in[f] + "\n" for f, _ in lines))
    stats = describe(corpus, queries, qrels, unlabelled, seed, size)
    _write(os.path.join(out, "stats.json"), json.dumps(stats, indent=1, ensure_ascii=False) + "\n")
    return stats


def unlabelled_text(world, renderers, held_out, held_out_texts, n, rng):
    """-> {language: n (fact, sentence)}: statements of random facts; in the query languages 30 % questions, about
    facts not in `held_out`. A line containing one of `held_out_texts` (any language's) is drawn again."""
    facts = list(world.facts)
    askable = [f for f in facts if f not in held_out]

    def draw_in(rend):  # the random draws in the order the files were first written with (same seed, same text)
        stated = rend is None or rng.random() < 0.7
        fact = rng.choice(facts if stated else askable)
        text = world.statement(*fact) if stated else world.question(*fact)
        return fact, text if rend is None else rend.render(text, rng)
    draw = {PIVOT: lambda: draw_in(None), **{code: lambda rend=rend: draw_in(rend) for code, rend in renderers.items()}}
    out = {code: [d() for _ in range(n)] for code, d in draw.items()}
    while True:  # one search per held-out query over all the text; a hit is rare, so this loop ends at once
        text = "\n".join(line for lines in out.values() for _, line in lines)
        hits = [q for q in held_out_texts if q in text]
        if not hits:
            return out
        for code, lines in out.items():
            out[code] = [draw[code]() if any(q in line for q in hits) else (f, line) for f, line in lines]


def describe(corpus, queries, qrels, unlabelled, seed, size):
    """Counts per split and language, how often a query shares a word with its positive passage, unlabelled lines."""
    text = {p["_id"]: (p["title"] + " " + p["text"]).lower() for p in corpus}
    lang = {q["_id"]: q["lang"] for q in queries}
    qtext = {q["_id"]: q["text"].lower() for q in queries}
    per_lang = {}
    for split, rows in qrels.items():
        for qid, pid in rows:
            d = per_lang.setdefault(lang[qid], {"train": 0, "dev": 0, "test": 0, "shares_word": 0})
            d[split] += 1
            d["shares_word"] += bool(set(qtext[qid].split()) & set(text[pid].split()))
    for d in per_lang.values():
        d["shares_word"] = round(d["shares_word"] / (d["train"] + d["dev"] + d["test"]), 3)
    return {"size": size, "seed": seed, "passages": len(corpus), "queries": len(queries),
            "languages": {lang.code: {"resource": lang.resource, "script": lang.script, **per_lang[lang.code]}
                          for lang in LANGS},
            "unlabelled": {code: len(lines) for code, lines in unlabelled.items()}}


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_jsonl(path, rows):
    _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
