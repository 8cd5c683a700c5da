"""VPC statistics against hand-computed values, and censoring handled like the data."""

import numpy as np
import pandas as pd
import pytest

from pkpd.predict.ppc import pit
from pkpd.predict.vpc import bins_of, censored_quantile, vpc_statistics


def _records(dv, censored, times, lloq=1.0, pred=None):
    n = len(dv)
    return pd.DataFrame({"analyte": "transgene", "nominal_time": times, "dv": dv, "censored": censored,
                         "lloq": lloq, "pred": pred if pred is not None else np.ones(n), "product": "CD19"})


def test_percentiles_of_a_small_case_by_hand():
    # bin at day 3: 2, 4, 6, 8, 10; bin at day 7: 1.5, 3, 4.5, 6, 7.5 (no censoring)
    dv = np.array([2, 4, 6, 8, 10, 1.5, 3, 4.5, 6, 7.5], float)
    times = np.array([3] * 5 + [7] * 5, float)
    records = _records(dv, np.zeros(10, bool), times)
    # three replicates: the data times 1, 2 and 3
    sims = np.stack([dv * k for k in (1.0, 2.0, 3.0)])
    table = vpc_statistics(records, sims, np.zeros_like(sims, bool), ci_prob=0.9)
    day3 = table[table["time"] == 3].iloc[0]
    # type-7 quantiles by hand: p05 of (2,4,6,8,10): position 0.2 -> 2 + 0.2*2 = 2.4; median 6;
    # p95: position 3.8 -> 8 + 0.8*2 = 9.6
    assert day3["obs_p05"] == pytest.approx(2.4)
    assert day3["obs_p50"] == pytest.approx(6.0)
    assert day3["obs_p95"] == pytest.approx(9.6)
    # replicate medians 6, 12, 18: their median 12, 5% -> 6 + 0.1*6 = 6.6, 95% -> 12 + 0.9*6 = 17.4
    assert day3["sim_p50_med"] == pytest.approx(12.0)
    assert day3["sim_p50_lo"] == pytest.approx(6.6)
    assert day3["sim_p50_hi"] == pytest.approx(17.4)
    day7 = table[table["time"] == 7].iloc[0]
    assert day7["obs_p50"] == pytest.approx(4.5) and day7["n"] == 5
    assert (table["obs_blq"] == 0).all() and (table["sim_blq_med"] == 0).all()


def test_prediction_correction_by_hand():
    # two records per bin, PRED 1 and 4 (median 2.5): corrected values dv * 2.5 / PRED
    dv = np.array([2.0, 8.0])
    records = _records(dv, np.zeros(2, bool), np.array([5.0, 5.0]), pred=np.array([1.0, 4.0]))
    sims = np.stack([dv, dv])
    table = vpc_statistics(records, sims, np.zeros_like(sims, bool), prediction_corrected=True,
                           percentiles=(0.5,))
    assert table["obs_p50"].iloc[0] == pytest.approx(5.0)  # both become 5.0


def test_censored_quantile_is_missing_where_it_reaches_a_blq_value():
    values = np.array([1.0, 1.0, 3.0, 4.0, 5.0])
    censored = np.array([True, True, False, False, False])
    assert np.isnan(censored_quantile(values, censored, 0.05))
    assert np.isnan(censored_quantile(values, censored, 0.4))   # position 1.6: between BLQ and 3
    assert censored_quantile(values, censored, 0.5) == pytest.approx(3.0)
    assert censored_quantile(values, censored, 0.95) == pytest.approx(4.8)


def test_half_blq_data_give_a_sensible_blq_panel():
    rng = np.random.default_rng(1)
    n, R, lloq = 40, 100, 1.0
    # log-normal values around the LLOQ: about half below it
    truth = rng.lognormal(0.0, 1.0, (R + 1, n))
    dv, sims = truth[0], truth[1:]
    records = _records(np.where(dv < lloq, lloq, dv), dv < lloq, np.full(n, 28.0), lloq=lloq)
    table = vpc_statistics(records, np.where(sims < lloq, lloq, sims), sims < lloq)
    row = table.iloc[0]
    assert 0.3 < row["obs_blq"] < 0.7
    assert row["sim_blq_lo"] < 0.5 < row["sim_blq_hi"]
    assert row["sim_blq_lo"] <= row["obs_blq"] <= row["sim_blq_hi"]
    # the 5th percentile lies below the LLOQ in the data and in the simulations: not invented
    assert np.isnan(row["obs_p05"]) and np.isnan(row["sim_p05_med"])
    # the 95th percentile is quantified and inside its simulated interval
    assert row["sim_p95_lo"] <= row["obs_p95"] <= row["sim_p95_hi"]


def test_bins_use_nominal_times_or_quantile_groups():
    t = np.array([0, 3, 3, 6], float)
    np.testing.assert_array_equal(bins_of(t), t)
    many = np.arange(100, dtype=float)
    assert len(np.unique(bins_of(many, max_bins=10))) == 10


def test_pit_of_calibrated_replicates_is_uniform():
    rng = np.random.default_rng(2)
    sims = rng.normal(size=(400, 2000))
    dv = rng.normal(size=2000)
    u = pit(dv, np.zeros(2000, bool), sims, np.zeros_like(sims, bool), rng)
    counts, _ = np.histogram(u, bins=10, range=(0, 1))
    assert counts.min() > 150 and counts.max() < 250


def test_replicates_must_align_with_records():
    records = _records(np.ones(3), np.zeros(3, bool), np.zeros(3))
    with pytest.raises(ValueError, match="replicates have 2 records, the data 3"):
        vpc_statistics(records, np.ones((5, 2)), np.zeros((5, 2), bool))
