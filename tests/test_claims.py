"""claims.py's helpers: the pooled comparison treats each (seed, query) as a unit; mean and spread by hand."""
import pytest

import claims
import evaluate


def test_mean_sd_by_hand():
    assert claims.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert claims.mean_sd([0.5]) == (0.5, 0.0)
    assert claims.fmt([1.0, 2.0, 3.0]) == "2.000 ± 1.000" and claims.fmt([0.25]) == "0.250"


def test_pooled_comparison_equals_compare_on_the_concatenated_queries():
    """Two seeds, two queries: B ranks the relevant passage 1st where A ranks it 2nd, once per seed; the pooled
    mrr@10 difference is the mean over the four (seed, query) units: (0.5 + 0 + 0.5 + 0) / 4."""
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    lang = {"q1": "xx", "q2": "yy"}
    a = {0: {"q1": {"d0": 2.0, "d1": 1.0}, "q2": {"d2": 1.0}}, 1: {"q1": {"d0": 2.0, "d1": 1.0}, "q2": {"d2": 1.0}}}
    b = {0: {"q1": {"d1": 2.0, "d0": 1.0}, "q2": {"d2": 1.0}}, 1: {"q1": {"d1": 2.0, "d0": 1.0}, "q2": {"d2": 1.0}}}
    res = claims.pooled(qrels, a, b, lang, [0, 1])
    assert res["n_queries"] == 4
    assert res["all"]["mrr@10"]["diff"] == pytest.approx(0.25)
    assert res["per_lang"]["xx"]["mrr@10"]["diff"] == pytest.approx(0.5)
    assert res["per_lang"]["yy"]["mrr@10"]["diff"] == 0
    one = evaluate.compare(qrels, a[0], b[0], claims.METRICS, lang)
    assert one["all"]["mrr@10"]["diff"] == pytest.approx(0.25)


def test_bad_seeds_or_fractions_are_one_line_errors(capsys):
    for argv in (["--seeds", "x"], ["--fracs", "0.5"], ["--fracs", "0,1"], ["--seeds", "-1"]):
        assert claims.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: --seeds") and err.count("\n") == 1
