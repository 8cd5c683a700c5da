"""Visual predictive check statistics, with censoring handled like the data.

Per analyte, stratum and bin of nominal time: the observed 5th, 50th and 95th percentiles, the
same percentiles of every replicate (the 90% interval and median over replicates), and the
fraction below the LLOQ observed and simulated.

Censoring: values below the LLOQ are not dropped and not imputed. They sort below every
quantified value; a percentile whose interpolation reaches a censored value is itself below
the LLOQ and is reported as NaN (for the data and for each replicate alike), so the plot
shows it in the BLQ panel rather than as a made-up number.

Prediction correction (pcVPC, Bergstrand et al., AAPS J 2011): each value (observed and
simulated) is multiplied by median(PRED in its bin) / PRED of its record, which removes the
spread that comes from different doses and covariates within a bin.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

PERCENTILES = (0.05, 0.5, 0.95)
MAX_BINS = 25


def censored_quantile(values: np.ndarray, censored: np.ndarray, q: float) -> np.ndarray:
    """Type-7 (linear) quantile along the last axis, NaN where it reaches a censored value.

    values, censored: (..., n); censored values sort below all others."""
    x = np.where(censored, -np.inf, values)
    x = np.sort(x, axis=-1)
    n = x.shape[-1]
    pos = q * (n - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    w = pos - lo
    a, b = x[..., lo], x[..., hi]
    below = np.isneginf(a)
    a = np.where(below, np.nan, a)
    return a + w * (b - a) if hi != lo else a


def bins_of(nominal_time: np.ndarray, max_bins: int = MAX_BINS) -> np.ndarray:
    """Bin label (a representative time) of each record: its nominal time when there are at
    most `max_bins` distinct ones, else the median time of its quantile bin."""
    t = np.asarray(nominal_time, float)
    distinct = np.unique(t[np.isfinite(t)])
    if len(distinct) <= max_bins:
        return t
    edges = np.unique(np.quantile(t, np.linspace(0, 1, max_bins + 1)))
    index = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    centres = pd.Series(t).groupby(index).median()
    return centres.reindex(index).to_numpy()


def vpc_statistics(records: pd.DataFrame, sims: np.ndarray, sim_censored: np.ndarray, *,
                   stratify: str | None = None, prediction_corrected: bool = False,
                   percentiles: Sequence[float] = PERCENTILES, ci_prob: float = 0.9) -> pd.DataFrame:
    """One row per analyte, stratum and bin.

    records: columns analyte, nominal_time, dv, censored, lloq (and pred for pcVPC, and the
    `stratify` column); sims, sim_censored: (R, n_records) replicates aligned with records.
    Columns: analyte, stratum, time, n, obs_pXX, sim_pXX_lo/_med/_hi for each percentile,
    obs_blq, sim_blq_lo/_med/_hi, lloq."""
    if sims.shape[1] != len(records):
        raise ValueError(f"replicates have {sims.shape[1]} records, the data {len(records)}")
    lo_q, hi_q = (1 - ci_prob) / 2, 1 - (1 - ci_prob) / 2
    frame = records.reset_index(drop=True).copy()
    frame["bin"] = bins_of(frame["nominal_time"].to_numpy())
    frame["stratum"] = frame[stratify].astype(str) if stratify and stratify != "all" else "all subjects"
    dv = frame["dv"].to_numpy(float)
    cens = frame["censored"].to_numpy(bool)
    rows = []
    for (analyte, stratum, time), group in frame.groupby(["analyte", "stratum", "bin"], sort=True):
        idx = group.index.to_numpy()
        y, yc = dv[idx], cens[idx]
        s, sc = sims[:, idx], sim_censored[:, idx]
        if prediction_corrected:
            pred = group["pred"].to_numpy(float)
            factor = np.median(pred) / np.maximum(pred, 1e-300)
            y, s = y * factor, s * factor[None, :]
        row = {"analyte": analyte, "stratum": stratum, "time": float(time), "n": len(idx),
               "lloq": float(np.nanmedian(group["lloq"])) if group["lloq"].notna().any() else np.nan}
        for q in percentiles:
            key = f"p{round(100 * q):02d}"
            row[f"obs_{key}"] = float(censored_quantile(y, yc, q))
            per_replicate = censored_quantile(s, sc, q)
            row.update(_interval(per_replicate, f"sim_{key}", lo_q, hi_q))
        row["obs_blq"] = float(yc.mean())
        row.update(_interval(sc.mean(axis=1), "sim_blq", lo_q, hi_q))
        rows.append(row)
    return pd.DataFrame(rows)


def _interval(values: np.ndarray, prefix: str, lo_q: float, hi_q: float) -> dict:
    """Median and interval over replicates. A replicate whose statistic is below the LLOQ
    (NaN) counts as lower than every other, so a bound reaching it is below the LLOQ too."""
    below = np.isnan(values)
    return {f"{prefix}_{name}": float(censored_quantile(values, below, q))
            for name, q in (("lo", lo_q), ("med", 0.5), ("hi", hi_q))}
