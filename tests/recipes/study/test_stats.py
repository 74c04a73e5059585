import math

import pytest
import scipy.stats

from envconv.recipes.study.stats import paired_difference, summarize, t_quantile_975


# Printed tables of Student's t (e.g. Fisher & Yates), two-sided 95%.
@pytest.mark.parametrize("df, table", [(1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228), (30, 2.042),
                                       (120, 1.980)])
def test_t_quantile_matches_printed_tables(df, table):
    assert t_quantile_975(df) == pytest.approx(table, abs=6e-4)


def test_summary_is_mean_and_sample_std():
    s = summarize([5.0, 6.0, 8.0])
    assert s.mean == pytest.approx(19 / 3)
    assert s.std == pytest.approx(math.sqrt(((5 - 19 / 3) ** 2 + (6 - 19 / 3) ** 2 + (8 - 19 / 3) ** 2) / 2))
    assert summarize([2.0]).std is None and summarize([]) is None


def test_paired_difference_uses_common_seeds_and_the_t_interval():
    a = {0: 6.0, 1: 5.5, 2: 5.9, 3: 7.0}
    b = {0: 6.4, 1: 6.1, 2: 6.0}                      # seed 3 has no pair
    d = paired_difference(a, b)
    diffs = [-0.4, -0.6, -0.1]
    ref = scipy.stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert d.n == 3 and d.mean == pytest.approx(sum(diffs) / 3)
    assert (d.low, d.high) == (pytest.approx(ref.low, abs=1e-3), pytest.approx(ref.high, abs=1e-3))
    assert paired_difference({0: 1.0}, {0: 2.0}).low is None
    assert paired_difference({0: 1.0}, {1: 2.0}) is None
