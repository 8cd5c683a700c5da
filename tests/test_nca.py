"""NCA against curves whose AUC, half-life and Tmax are known in closed form."""

import math

import numpy as np
import pandas as pd
import pytest

from pkpd.data import read_cohort
from pkpd.nca import (aplasia_metrics, auc_to, exposure_metrics, geometric_stats, nadir_metrics, nca,
                      summarize)


def stein(t, cmax=24000.0, tmax=9.3, foldx=3900.0, alpha=0.16, fb=0.0079, beta=0.0032):
    """Stein et al., CPT:PSP 2019;8:285, Table 1 typical multiphasic transgene curve."""
    t = np.asarray(t, float)
    rise = cmax / foldx * np.exp(np.log(foldx) / tmax * t)
    tau = np.clip(t - tmax, 0, None)
    return np.where(t < tmax, rise, cmax * ((1 - fb) * np.exp(-alpha * tau) + fb * np.exp(-beta * tau)))


def test_log_down_trapezoid_is_exact_for_an_exponential_decline():
    k, c0 = 0.16, 24000.0
    t = np.array([0, 1, 3, 7, 14, 21, 28, 35, 60, 90.0])
    c = c0 * np.exp(-k * t)
    out = exposure_metrics(t, c, np.zeros_like(t))
    assert out["auc_0_28d"] == pytest.approx(c0 / k * (1 - math.exp(-k * 28)), rel=1e-12)
    assert out["auc_0_90d"] == pytest.approx(c0 / k * (1 - math.exp(-k * 90)), rel=1e-12)
    assert out["half_life"] == pytest.approx(math.log(2) / k, rel=1e-10)
    assert out["r2_adj"] == pytest.approx(1.0)
    assert (out["cmax"], out["tmax"], out["tlast"]) == (c0, 0.0, 90.0)


def test_partial_auc_interpolates_logarithmically_between_samples():
    k = 0.1
    t = np.array([0, 20, 40.0])
    c = 1000 * np.exp(-k * t)
    assert auc_to(t, c, 28.0) == pytest.approx(1000 / k * (1 - math.exp(-k * 28)), rel=1e-12)


def test_linear_up_is_exact_for_a_linear_rise():
    t = np.array([0, 2, 5, 9, 28, 40.0])
    c = 3.0 * t + 1.0
    out = exposure_metrics(t, c, np.zeros_like(t))
    assert out["auc_0_28d"] == pytest.approx(3.0 * 28**2 / 2 + 28, rel=1e-12)
    assert math.isnan(out["half_life"])  # no decline, no terminal phase


def test_stein_typical_curve_reproduces_published_exposure():
    # Stein et al., CPT:PSP 2019;8:285, Table 1: Cmax 24,000 copies/ug at 9.3 d, AUC0-28 ~1.72e5.
    t = np.unique(np.concatenate([np.arange(0, 28.01, 0.05), [9.3], np.arange(30, 366, 30.0)]))
    out = exposure_metrics(t, stein(t), np.zeros_like(t))
    assert out["cmax"] == pytest.approx(24000.0)
    assert out["tmax"] == pytest.approx(9.3)
    assert out["auc_0_28d"] == pytest.approx(171774.285, rel=1e-3)  # scipy.quad of the closed form
    assert out["auc_0_28d"] == pytest.approx(1.72e5, rel=0.01)
    # the last monthly points lie on the persistence phase: beta = 0.0032/d, t1/2 ~ 217 d
    assert out["half_life"] == pytest.approx(math.log(2) / 0.0032, rel=0.05)


def test_tmax_of_a_gamma_variate():
    tau = 7.0
    t = np.arange(0, 60.5, 0.5)
    out = exposure_metrics(t, t * np.exp(-t / tau), np.zeros_like(t))
    assert out["tmax"] == tau and out["cmax"] == pytest.approx(tau * math.exp(-1))


def test_blq_handling():
    t = np.array([0, 3, 6, 9, 14, 28, 60, 90.0])
    c = np.array([50, 800, 4000, 9000, 3000, 300, 50, 50.0])
    cens = np.array([1, 0, 0, 0, 0, 0, 1, 1])
    out = exposure_metrics(t, c, cens)
    # leading BLQ counts as 0: first segment is (0, 0) -> (3, 800) linear
    expected = 800 * 3 / 2 + auc_to(t[1:6], c[1:6], 28.0)
    assert out["auc_0_28d"] == pytest.approx(expected)
    assert out["auc_last"] == pytest.approx(expected)  # Tlast = 28
    assert out["auc_0_90d"] == pytest.approx(expected)  # BLQ after Tlast, sampled to 90 d
    assert (out["tlast"], out["clast"], out["t_first_blq_after_peak"]) == (28.0, 300.0, 60.0)


def test_partial_auc_missing_when_follow_up_ends_early():
    t = np.array([0, 3, 9, 20.0])
    out = exposure_metrics(t, np.array([1, 100, 1000, 200.0]), np.zeros(4))
    assert math.isnan(out["auc_0_28d"]) and math.isnan(out["auc_0_90d"])


def test_all_blq_profile_gives_no_metrics():
    out = exposure_metrics([0, 3, 6], [50, 50, 50], [1, 1, 1])
    assert all(math.isnan(v) for v in out.values())


def test_aplasia_onset_duration_and_ongoing():
    t = np.array([3, 6, 9, 30, 61, 91, 122, 152.0])
    b = np.array([40, 4, 1, 1, 1, 3, 12, 80.0])
    cens = np.array([0, 0, 1, 1, 1, 0, 0, 0])
    out = aplasia_metrics(t, b, cens)
    assert (out["aplasia_onset"], out["aplasia_duration"], out["aplasia_ongoing"]) == (6.0, 116.0, False)
    ongoing = aplasia_metrics(t[:5], b[:5], cens[:5])
    assert (ongoing["aplasia_duration"], ongoing["aplasia_ongoing"]) == (55.0, True)
    assert aplasia_metrics(t, b, cens, threshold=0.5)["aplasia_onset"] == 9.0  # BLQ counts as below


def test_immunoglobulin_nadir():
    out = nadir_metrics([30, 61, 91], [9.0, 7.5, 8.0], [0, 0, 0], [0.5, 0.5, 0.5], baseline=10.0)
    assert (out["nadir"], out["t_nadir"], out["nadir_fold_change"]) == (7.5, 61.0, 0.75)


def test_geometric_statistics():
    stats = geometric_stats([1.0, 100.0, np.nan])
    assert stats["n"] == 2 and stats["geo_mean"] == pytest.approx(10.0)
    s2 = np.var(np.log([1.0, 100.0]), ddof=1)
    assert stats["geo_cv_percent"] == pytest.approx(100 * math.sqrt(math.exp(s2) - 1))
    assert (stats["median"], stats["min"], stats["max"]) == (50.5, 1.0, 100.0)


def test_nca_on_the_example_cohort(example_nonmem):
    cohort = read_cohort(example_nonmem)
    table = nca(cohort)
    assert len(table) == 41 * 10
    tg = table[table["analyte"] == "transgene"].set_index("subject")
    obs = cohort.analyte_observations("transgene")
    observed_max = obs[obs["censored"] == 0].groupby("subject")["value"].max()
    pd.testing.assert_series_equal(tg["cmax"], observed_max.reindex(tg.index), check_names=False)
    assert tg["auc_0_28d"].notna().all() and (tg["tmax"].between(2, 28)).all()
    b = table[table["analyte"] == "bcells"]
    assert b["aplasia_duration"].between(40, 200).all()
    igg = table[table["analyte"] == "igg"]
    bcma = igg[igg["product"] == "CD19/BCMA"]["nadir_fold_change"].median()
    cd19 = igg[igg["product"] != "CD19/BCMA"]["nadir_fold_change"].median()
    assert bcma < cd19  # BCMA targeting lowers IgG more (Wang et al., Ann Rheum Dis 2024)
    summary = summarize(table)
    row = summary[(summary["analyte"] == "transgene") & (summary["metric"] == "cmax")]
    assert row["n"].sum() == 41 and set(row["product"]) == {"CD19", "CD19/BCMA", "CD19/CD20"}


def test_nca_rejects_unknown_analyte(example_nonmem):
    with pytest.raises(ValueError, match="not in the cohort"):
        nca(read_cohort(example_nonmem), analytes=["il99"])


def test_windows_follow_the_time_unit_and_auc_inf_extrapolates():
    from pkpd.nca import window_names

    assert window_names(["24h", "28d"], "h") == [(24.0, "auc_0_24h"), (672.0, "auc_0_28d")]
    assert window_names([12], "h") == [(12.0, "auc_0_12h")]
    with pytest.raises(ValueError, match="not a duration"):
        window_names(["soon"], "h")
    k, c0 = 0.1, 50.0
    t = np.array([0, 1, 2, 4, 8, 12, 24.0])
    out = exposure_metrics(t, c0 * np.exp(-k * t), np.zeros_like(t), windows=window_names(["24h"], "h"))
    assert out["auc_0_24h"] == pytest.approx(c0 / k * (1 - math.exp(-k * 24)), rel=1e-12)
    assert out["auc_inf"] == pytest.approx(c0 / k, rel=1e-9)
    assert out["auc_extrap_percent"] == pytest.approx(100 * math.exp(-k * 24), rel=1e-6)


def test_steady_state_metrics_over_the_last_interval():
    from pkpd.nca import steady_state_metrics

    k, tau, dose_times = 0.1, 12.0, np.arange(0, 60, 12.0)
    t = np.unique(np.concatenate([np.arange(0, 72.01, 0.25)]))
    # IV bolus every 12 h: C(t) = sum over past doses of 10 exp(-k (t - t_d))
    c = sum(np.where(t >= d, 10 * np.exp(-k * (t - d)), 0.0) for d in dose_times)
    out = steady_state_metrics(t, c, np.zeros_like(t), dose_times)
    accumulated = 10 * sum(np.exp(-k * tau * j) for j in range(5))  # level just after the 5th dose
    assert out["tau"] == tau and out["cmax_ss"] == pytest.approx(accumulated)
    assert out["cmin_ss"] == pytest.approx(accumulated * np.exp(-k * tau))
    assert out["auc_tau"] == pytest.approx(accumulated / k * (1 - np.exp(-k * tau)), rel=1e-9)
    assert math.isnan(steady_state_metrics(t, c, np.zeros_like(t), [0.0])["auc_tau"])  # a single dose


def test_nca_of_a_pk_cohort_in_hours(tmp_path):
    text = ("ID,TIME,TIMEU,AMT,AMTU,EVID,DV,ANALYTE,UNIT\n1,0,HOURS,100,mg,1,.,.,.\n"
            + "".join(f"1,{t},HOURS,0,.,0,{50 * math.exp(-0.1 * t):.6g},conc,mg/L\n" for t in (1, 2, 4, 8, 12, 24)))
    (tmp_path / "pk.csv").write_text(text)
    table = nca(read_cohort(tmp_path / "pk.csv"))
    row = table.iloc[0]
    assert table.attrs["time_unit"] == "h" and "auc_0_24h" in table and "auc_0_28d" not in table
    assert row["half_life"] == pytest.approx(math.log(2) / 0.1, rel=1e-4)
    summary = summarize(table)
    assert summary.loc[summary["metric"] == "auc_0_24h", "unit"].iloc[0] == "mg/L*h"


def exposure_by_the_rules(times, values, censored, windows=()):
    """The exposure rules written out for one profile (a reference for pkpd.nca's compiled
    rows): leading BLQ as 0, later BLQ and points after Tlast dropped, the first time of the
    peak; None without a quantified value."""
    quantified = (censored == 0) & np.isfinite(values)
    if not quantified.any():
        return None
    q = np.flatnonzero(quantified)
    first, last = q[0], q[-1]
    kept = [k for k in range(last + 1) if quantified[k] or (k < first and censored[k] != 0)]
    t, c = times[kept], np.where(quantified, values, 0.0)[kept]
    peak = q[np.argmax(values[q])]
    out = {"cmax": values[peak], "tmax": times[peak], "tlast": times[last], "clast": values[last],
           "auc_last": auc_to(t, c, times[last]) if len(t) > 1 else 0.0}
    for end, name in windows:
        out[name] = auc_to(t, c, end) if end <= times[last] else out["auc_last"] if times[-1] >= end else np.nan
    return out


def test_peaks_of_many_profiles_follow_the_rules():
    from pkpd.nca import exposure_many

    rng = np.random.default_rng(4)
    times = np.array([0.0, 1.0, 3.0, 7.0, 14.0, 28.0])
    values = rng.lognormal(2.0, 1.5, (300, len(times)))
    values[::7, 2] = values[::7, 3]                     # ties: the first time of the peak
    censored = (rng.random(values.shape) < 0.3).astype(int)
    censored[::11] = 1                                  # profiles without a quantified value
    many = exposure_many(times, values, censored)
    for i in range(len(values)):
        one = exposure_by_the_rules(times, values[i], censored[i]) or {"cmax": np.nan, "tmax": np.nan}
        np.testing.assert_equal([many["cmax"][i], many["tmax"][i]], [one["cmax"], one["tmax"]])


def test_aplasia_and_nadir_of_many_profiles_equal_the_metrics_of_each():
    from pkpd.nca import aplasia_many, nadir_many

    rng = np.random.default_rng(5)
    times = np.array([1.0, 3.0, 7.0, 14.0, 28.0, 56.0, 90.0, 180.0])
    values = rng.lognormal(1.5, 1.8, (400, len(times)))
    censored = (rng.random(values.shape) < 0.25).astype(int)
    values[::9] = 50.0                                   # never in aplasia
    censored[::9] = 0
    lloq = np.full(len(times), 1.0)
    baseline = np.where(np.arange(400) % 13 == 0, np.nan, rng.lognormal(5, 0.3, 400))
    aplasia = aplasia_many(times, values, censored)
    nadir = nadir_many(times, values, censored, lloq, baseline)
    for i in range(len(values)):
        one = aplasia_metrics(times, values[i], censored[i])
        np.testing.assert_equal([aplasia["aplasia_onset"][i], aplasia["aplasia_duration"][i]],
                                [one["aplasia_onset"], one["aplasia_duration"]])
        if one["aplasia_ongoing"] is not pd.NA:
            assert bool(aplasia["aplasia_ongoing"][i]) == one["aplasia_ongoing"]
        low = nadir_metrics(times, values[i], censored[i], lloq, baseline[i])
        np.testing.assert_equal([nadir[k][i] for k in ("nadir", "t_nadir", "nadir_fold_change")],
                                [low[k] for k in ("nadir", "t_nadir", "nadir_fold_change")])


def test_exposure_of_many_profiles_follows_the_rules():
    from pkpd.nca import exposure_many

    rng = np.random.default_rng(6)
    times = np.array([0.0, 1.0, 3.0, 6.0, 9.0, 14.0, 21.0, 28.0, 60.0, 90.0, 180.0])
    values = rng.lognormal(3.0, 1.5, (500, len(times)))
    values[::5] = np.sort(values[::5], axis=1)[:, ::-1]          # falling profiles: log-down segments
    censored = (rng.random(values.shape) < 0.3).astype(int)
    censored[::17] = 1
    censored[1::19, -4:] = 1                                     # trailing BLQ before a window's end
    windows = [(28.0, "auc_0_28d"), (90.0, "auc_0_90d"), (10.0, "auc_0_10d"), (200.0, "auc_0_200d")]
    many = exposure_many(times, values, censored, windows)
    keys = ("cmax", "tmax", "tlast", "clast", "auc_last", *(name for _, name in windows))
    for i in range(len(values)):
        one = exposure_by_the_rules(times, values[i], censored[i], windows) or dict.fromkeys(keys, np.nan)
        single = exposure_metrics(times, values[i], censored[i], terminal=False, windows=windows)
        for key in keys:
            np.testing.assert_allclose(many[key][i], one[key], rtol=1e-12, err_msg=f"{key} of profile {i}")
            np.testing.assert_equal(single[key], many[key][i])
