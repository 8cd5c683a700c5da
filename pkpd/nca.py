"""Non-compartmental analysis of CAR-T exposure and PD, per subject and analyte.

Conventions (stated once, used everywhere):
- Time is days since the first infusion; only records at or after time 0 enter exposure
  metrics, the last pre-infusion record is the baseline.
- AUC: linear trapezoids while the level rises or stays, log trapezoids while it falls
  ("linear-up/log-down"), from the first sample at or after time 0 to Tlast.
- Below-LLOQ records: before the first quantified value they count as 0; between quantified
  values and after Tlast they are left out of the AUC (as PKNCA does by default).
- AUC0-T: interpolated (log when falling) when T <= Tlast; equal to AUClast when T > Tlast but
  the subject was sampled (below the LLOQ) at or after T; missing when follow-up ends before T.
- Terminal half-life: log-linear least squares on the last n >= 3 quantified points after
  Tmax; of the candidate n, the largest adjusted R^2 wins, ties (within 1e-4) going to more
  points; reported only with a negative slope.
- B-cell aplasia: a record is aplastic when below the LLOQ or <= the threshold (default
  5 cells/uL). Onset = first aplastic record after time 0; duration runs to the first later
  non-aplastic record, or to the last record (then `aplasia_ongoing` is True).
- Immunoglobulin nadir: lowest post-infusion value (a below-LLOQ record counts at its LLOQ),
  its time, and the ratio to baseline.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .data.cohort import Cohort

EXPOSURE_METRICS = ["cmax", "tmax", "auc_0_28", "auc_0_90", "auc_last", "clast", "tlast",
                    "t_first_blq_after_peak", "lambda_z", "half_life", "r2_adj", "n_lambda_z"]
APLASIA_METRICS = ["aplasia_onset", "aplasia_duration", "aplasia_ongoing"]
NADIR_METRICS = ["baseline", "nadir", "t_nadir", "nadir_fold_change"]
DEFAULT_APLASIA_THRESHOLD = 5.0  # cells/uL (science.md 3.1)


# --- building blocks on arrays ----------------------------------------------------------
def segment_auc(t1: float, c1: float, t2: float, c2: float) -> float:
    """Area of one interval: log trapezoid when falling between positive levels, else linear."""
    dt = t2 - t1
    if c2 < c1 and c2 > 0:
        return (c1 - c2) * dt / math.log(c1 / c2)
    return (c1 + c2) * dt / 2.0


def interpolate(t1: float, c1: float, t2: float, c2: float, t: float) -> float:
    """Level at t in [t1, t2], logarithmic when falling between positive levels."""
    w = (t - t1) / (t2 - t1)
    if c2 < c1 and c2 > 0:
        return c1 * math.exp(w * math.log(c2 / c1))
    return c1 + w * (c2 - c1)


def auc_to(times: np.ndarray, levels: np.ndarray, end: float) -> float:
    """Linear-up/log-down AUC from times[0] to `end` (<= times[-1])."""
    total = 0.0
    for i in range(len(times) - 1):
        t1, t2, c1, c2 = times[i], times[i + 1], levels[i], levels[i + 1]
        if t2 <= end:
            total += segment_auc(t1, c1, t2, c2)
        else:
            if end > t1:
                total += segment_auc(t1, c1, end, interpolate(t1, c1, t2, c2, end))
            break
    return total


def terminal_slope(times: np.ndarray, levels: np.ndarray, min_points: int = 3):
    """(lambda_z, adjusted R^2, n points) from the best log-linear fit of the last points."""
    best = (np.nan, np.nan, 0)
    n_avail = len(times)
    for n in range(min_points, n_avail + 1):
        t, y = times[-n:], np.log(levels[-n:])
        if np.ptp(t) == 0:
            continue
        slope, intercept = np.polyfit(t, y, 1)
        residual = y - (slope * t + intercept)
        ss_tot = float(np.sum((y - y.mean()) ** 2))
        r2 = 1.0 - float(np.sum(residual**2)) / ss_tot if ss_tot > 0 else 1.0
        r2_adj = 1.0 - (1.0 - r2) * (n - 1) / (n - 2)
        if slope >= 0:
            continue
        if np.isnan(best[1]) or r2_adj > best[1] - 1e-4:
            best = (-slope, r2_adj, n)
    return best


def exposure_metrics(times, values, censored, terminal: bool = True) -> dict:
    """Exposure metrics of one post-infusion profile (times >= 0, sorted); `terminal=False`
    skips the terminal half-life (the costly part, not needed by dose selection)."""
    times, values = np.asarray(times, float), np.asarray(values, float)
    censored = np.asarray(censored, int) != 0
    out = dict.fromkeys(EXPOSURE_METRICS, np.nan)
    quantified = ~censored & np.isfinite(values)
    if not quantified.any():
        return out
    first_q, last_q = np.flatnonzero(quantified)[[0, -1]]
    # leading BLQ -> 0; middle and trailing BLQ dropped
    keep = quantified.copy()
    keep[:first_q] = censored[:first_q]
    t = times[keep & (np.arange(len(times)) <= last_q)]
    c = np.where(quantified, values, 0.0)[keep & (np.arange(len(times)) <= last_q)]
    i_max = int(np.argmax(np.where(quantified, values, -np.inf)))
    tmax, cmax = times[i_max], values[i_max]
    tlast, clast = times[last_q], values[last_q]
    auc_last = auc_to(t, c, tlast) if len(t) > 1 else 0.0
    out.update(cmax=cmax, tmax=tmax, tlast=tlast, clast=clast, auc_last=auc_last)
    for end, key in ((28.0, "auc_0_28"), (90.0, "auc_0_90")):
        if end <= tlast:
            out[key] = auc_to(t, c, end)
        elif times[-1] >= end:
            out[key] = auc_last
    after_peak = np.flatnonzero(censored & (times > tmax))
    if after_peak.size:
        out["t_first_blq_after_peak"] = times[after_peak[0]]
    if not terminal:
        return out
    tail = quantified & (times > tmax) & (values > 0)
    lam, r2_adj, n = terminal_slope(times[tail], values[tail])
    if n:
        out.update(lambda_z=lam, half_life=math.log(2) / lam, r2_adj=r2_adj, n_lambda_z=n)
    return out


def aplasia_metrics(times, values, censored, threshold=DEFAULT_APLASIA_THRESHOLD) -> dict:
    """B-cell aplasia onset and duration from one post-infusion profile (times > 0, sorted)."""
    times, values = np.asarray(times, float), np.asarray(values, float)
    below = (np.asarray(censored, int) == 1) | (values <= threshold)
    out = {"aplasia_onset": np.nan, "aplasia_duration": np.nan, "aplasia_ongoing": pd.NA}
    if not below.any():
        return out
    start = int(np.flatnonzero(below)[0])
    recovered = np.flatnonzero(~below[start:])
    if recovered.size:
        end, ongoing = times[start + recovered[0]], False
    else:
        end, ongoing = times[-1], True
    out.update(aplasia_onset=times[start], aplasia_duration=end - times[start],
               aplasia_ongoing=ongoing)
    return out


def nadir_metrics(times, values, censored, lloq, baseline: float) -> dict:
    """Nadir, time of nadir and nadir/baseline from one post-infusion profile."""
    levels = np.where(np.asarray(censored, int) == 1, lloq, values).astype(float)
    out = {"baseline": baseline, "nadir": np.nan, "t_nadir": np.nan, "nadir_fold_change": np.nan}
    if not np.isfinite(levels).any():
        return out
    i = int(np.nanargmin(levels))
    out.update(nadir=levels[i], t_nadir=float(np.asarray(times)[i]))
    if np.isfinite(baseline) and baseline > 0:
        out["nadir_fold_change"] = levels[i] / baseline
    return out


# --- the cohort-level table -----------------------------------------------------------------
def nca(cohort: Cohort, analytes: Iterable[str] | None = None,
        aplasia_threshold: float = DEFAULT_APLASIA_THRESHOLD) -> pd.DataFrame:
    """One row per subject and analyte: exposure metrics for every analyte, aplasia metrics
    for B cells, nadir metrics for immunoglobulins and autoantibodies (NaN where not applicable).
    Time metrics are in days; AUCs in the analyte's unit times days."""
    names = list(analytes) if analytes is not None else list(cohort.analytes)
    unknown = sorted(set(names) - set(cohort.analytes))
    if unknown:
        raise ValueError(f"analyte(s) {', '.join(unknown)} not in the cohort; it has "
                         f"{', '.join(cohort.analytes)}")
    rows = []
    obs = cohort.observations[~cohort.observations["mdv"]]
    for (subject, analyte), group in obs[obs["analyte"].isin(names)].groupby(
            ["subject", "analyte"], sort=False):
        group = group.sort_values("time", kind="stable")
        kind = cohort.analytes[analyte].kind
        pre, post = group[group["time"] < 0], group[group["time"] >= 0]
        row = {"subject": subject, "analyte": analyte, "unit": cohort.analytes[analyte].unit,
               "n_obs": len(post), "n_blq": int((post["censored"] == 1).sum())}
        row.update(exposure_metrics(post["time"], post["value"], post["censored"]))
        baseline = float(pre["value"].iloc[-1]) if len(pre) else np.nan
        if kind == "bcell":
            late = post[post["time"] > 0]
            row.update(aplasia_metrics(late["time"], late["value"], late["censored"], aplasia_threshold))
        if kind in ("ig", "autoantibody", "bcell"):
            late = post[post["time"] > 0]
            row.update(nadir_metrics(late["time"], late["value"], late["censored"], late["lloq"], baseline))
        rows.append(row)
    columns = ["subject", "analyte", "unit", "n_obs", "n_blq", *EXPOSURE_METRICS,
               *APLASIA_METRICS, *NADIR_METRICS]
    table = pd.DataFrame(rows).reindex(columns=columns)
    table["aplasia_ongoing"] = table["aplasia_ongoing"].astype("boolean")
    covariates = cohort.subjects[[c for c in ("product", "dose_level", "lymphodepletion", "disease")
                                  if c in cohort.subjects]]
    return table.merge(covariates, left_on="subject", right_index=True, how="left")


SUMMARY_METRICS = ["cmax", "tmax", "auc_0_28", "auc_0_90", "auc_last", "clast", "tlast",
                   "t_first_blq_after_peak", "half_life", "aplasia_onset", "aplasia_duration",
                   "nadir", "t_nadir", "nadir_fold_change"]


def geometric_stats(values: Sequence[float]) -> dict:
    """n, geometric mean, geometric CV% (sqrt(exp(s^2) - 1)), median, min, max of finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    out = {"n": int(x.size), "geo_mean": np.nan, "geo_cv_percent": np.nan, "median": np.nan,
           "min": np.nan, "max": np.nan}
    if x.size == 0:
        return out
    out.update(median=float(np.median(x)), min=float(x.min()), max=float(x.max()))
    positive = x[x > 0]
    if positive.size == x.size:
        logs = np.log(positive)
        out["geo_mean"] = float(np.exp(logs.mean()))
        if x.size > 1:
            out["geo_cv_percent"] = float(100 * np.sqrt(np.expm1(logs.var(ddof=1))))
    return out


def summarize(table: pd.DataFrame, by: Sequence[str] = ("product", "dose_level"),
              metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """Summary by dose group as CAR-T labels print it: n, geometric mean, CV%, median, range."""
    by = [b for b in by if b in table.columns]
    rows = []
    for keys, group in table.groupby([*by, "analyte"], sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for metric in metrics:
            if metric not in group or group[metric].isna().all():
                continue
            rows.append({**dict(zip([*by, "analyte"], keys)), "metric": metric,
                         "unit": _metric_unit(metric, group["unit"].iloc[0]),
                         **geometric_stats(group[metric].astype(float))})
    return pd.DataFrame(rows)


def _metric_unit(metric: str, unit: str) -> str:
    if metric.startswith("auc"):
        return f"{unit}*d"
    if metric.startswith(("t", "aplasia", "half")):
        return "d"
    if metric.endswith("fold_change"):
        return "ratio"
    return unit
