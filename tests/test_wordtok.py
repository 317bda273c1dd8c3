"""wordtok.py: NLTK's word_tokenize restated (Punkt sentences, then NLTKWordTokenizer), on hand-worked sentences;
when NLTK 3.5 is installed, equal to it on random texts under two sets of Punkt parameters."""
import random

import pytest

import wordtok as W


@pytest.mark.parametrize("text, tokens", [
    ("Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\nThanks.",  # NLTK's own doctest
     "Good muffins cost $ 3.88 in New York . Please buy me two of them . Thanks ."),
    ("I can't go, it's 3:30 -- late.", "I ca n't go , it 's 3:30 -- late ."),
    ('She said "hi" to Mr. Smith. Then left.', "She said `` hi '' to Mr. Smith . Then left ."),
    ("(Sent1.) Sent2.", "( Sent1 . ) Sent2 ."),          # the ')' realigned into the first sentence
    ("Done... ok?! Yes.", "Done ... ok ? ! Yes ."),
    ("He was J. Smith. It rained.", "He was J. Smith . It rained ."),  # an initial before a capital: no break
    ("Born in 1990. the end.", "Born in 1990. the end ."),           # a number before lower case: no break
    ("東京都は日本の首都である。", "東京都は日本の首都である。"),
    ("«Bonjour» et ‘salut’", "« Bonjour » et ‘ salut ’"),
])
def test_hand_worked(text, tokens):
    assert W.word_tokenize(text) == tuple(tokens.split())


def test_sentences_and_parameters():
    p = W.PunktParams(abbrevs=frozenset({"inc"}), collocations=frozenset({("st", "louis")}),
                      starters=frozenset({"the"}), ortho={"shares": W.ORTHO_MID_LC})
    assert W.sentences("Acme Inc. The firm grew. Acme Inc. Shares rose.", p) == \
        ["Acme Inc.", "The firm grew.", "Acme Inc.", "Shares rose."]  # a starter; a word seen in lower case
    assert W.sentences("Acme Inc. Smith came. St. Louis won.", p) == ["Acme Inc. Smith came.", "St. Louis won."]
    assert W.sentences("Acme Inc. Smith came.", W.PunktParams()) == ["Acme Inc.", "Smith came."]  # no abbreviations


PIECES = ["Mr.", "Smith", "the", "U.S.", "J.", "1990.", "3.88", "$", "(roughly", "euros)", "New", "York.", "them.",
          "He", "said,", '"Hello!"', "'quoted'", "can't", "cannot", "gonna", "...", "etc.", "St.", "Louis", "Inc.",
          "The", "left.", "(Sent1.)", "--", "Why?", "«Bonjour»", "“smart”", "don't", "'tis", "O'Neill", "5.", "lower",
          "[1]", ";", "10:30", "#tag", "50%", "&", "*", "end.)", "end.'", '"Quote."', "東京", "日本の首都。", "Москва.",
          "\n", "\n\nPara", "''", "``", "B.C.", "a.m.", "i.e.", "wait...", ". . .", "x.y.z", "al."]


def test_equal_to_nltk_3_5():
    nltk = pytest.importorskip("nltk")
    if nltk.__version__ != "3.5":
        pytest.skip(f"NLTK {nltk.__version__}: the rules restated are 3.5's (later releases changed rare cases)")
    from nltk.tokenize.destructive import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    P = PunktParameters()
    P.abbrev_types, P.collocations, P.sent_starters = {"mr", "st", "inc", "etc", "u.s", "al"}, {("st", "louis")}, {"the"}
    P.ortho_context.update({"the": 66, "smith": 4, "lower": 32, "new": 36})
    mine = W.PunktParams(frozenset(P.abbrev_types), frozenset(P.collocations), frozenset(P.sent_starters),
                         dict(P.ortho_context))
    rng = random.Random(0)
    for params, p in ((PunktParameters(), W.PunktParams()), (P, mine)):
        for _ in range(300):
            text = " ".join(rng.choice(PIECES) for _ in range(rng.randint(1, 20)))
            sents = PunktSentenceTokenizer(params).tokenize(text)
            assert W.sentences(text, p) == sents, text
            assert [W.treebank(s) for s in sents] == [NLTKWordTokenizer().tokenize(s) for s in sents], text
