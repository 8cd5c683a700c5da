"""Posterior-predictive quantities for the observed subjects.

- IPRED: the individual prediction at each record, median and 90% band over posterior draws of
  the subject's own parameters; PRED: the typical subject with the subject's covariates
  (posterior medians of mu and beta, random effects zero).
- Replicates: the whole cohort simulated again R times, each from one posterior draw of the
  population (new random effects, residual error, and censoring below each record's LLOQ the
  same way as the data); the VPC and the PIT residuals use them.
- PIT: the fraction of replicates below the observed value (a censored observation draws its
  PIT uniformly between 0 and the replicates' fraction below the LLOQ, seeded); NPD =
  Phi^-1(PIT), the normalised prediction discrepancy (not decorrelated within a subject, so
  NPD rather than NPDE).
- Curves: IPRED bands and PRED on a fine time grid, for the individual-fit panels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats as st

from ..fit.run import Run
from ..simulate.compiled import Design
from ..simulate.virtual import fine_schedule, residual_draws, template_cohort
from .posterior import PosteriorDraws, predictions

BAND = (0.05, 0.95)  # the 90% bands of IPRED


@dataclass(frozen=True)
class PosteriorPredictive:
    records: pd.DataFrame   # one row per fitted record: subject, time, nominal_time, analyte, dv,
    #                         lloq, censored, stratum columns, pred, ipred, ipred_lo, ipred_hi, pit, npd
    replicates: np.ndarray  # (R, n_records) simulated values (censored ones hold the LLOQ)
    replicate_censored: np.ndarray  # (R, n_records) bool
    curves: pd.DataFrame    # subject, analyte, time, pred, ipred, ipred_lo, ipred_hi
    units: dict             # analyte -> unit


def posterior_predictive(run: Run, *, replicates: int = 200, draws: int = 100,
                         seed: int = 0) -> PosteriorPredictive:
    """IPRED/PRED at the records and on a fine grid, R replicates of the cohort, PIT and NPD."""
    if replicates < 20:
        raise ValueError("replicates must be at least 20 (percentile bands and PIT need them)")
    rng = np.random.default_rng(seed)
    posterior = PosteriorDraws.from_run(run)
    cohort, model = run.cohort, run.model
    design = Design(model, cohort, analytes=posterior.analytes)
    picks = posterior.pick(draws, rng)
    X = posterior.covariates(cohort)

    ipred_draws = np.stack([predictions(run, design, posterior.parameter_matrix(np.log(posterior.theta[s])))
                            for s in picks])
    pred = predictions(run, design, posterior.parameter_matrix(posterior.point_typical_log(X)))

    sims, sim_cens = simulate_replicates(run, posterior, design, X, replicates, rng)
    obs = cohort.observations.loc[design.records]
    records = pd.DataFrame({
        "subject": obs["subject"].to_numpy(), "time": design.time, "nominal_time": obs["nominal_time"].to_numpy(float),
        "analyte": np.asarray(design.analyte_names)[design.analyte], "dv": design.value,
        "lloq": design.lloq, "censored": design.censored == 1, "pred": pred,
        "ipred": np.median(ipred_draws, axis=0), "ipred_lo": np.quantile(ipred_draws, BAND[0], axis=0),
        "ipred_hi": np.quantile(ipred_draws, BAND[1], axis=0)})
    records = records.join(_strata(cohort), on="subject")
    records["pit"] = pit(records["dv"].to_numpy(), records["censored"].to_numpy(), sims, sim_cens, rng)
    records["npd"] = st.norm.ppf(records["pit"])
    curves = _curves(run, posterior, picks, X)
    units = {a: model.observations[a].unit for a in posterior.analytes}
    return PosteriorPredictive(records, sims, sim_cens, curves, units)


def simulate_replicates(run: Run, posterior: PosteriorDraws, design: Design, X: np.ndarray, n: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(values, censored), each (n, n_records): the cohort simulated n times from the posterior."""
    picks = posterior.pick(n, rng)
    analytes = np.asarray(design.analyte_names)[design.analyte]
    lloq = np.nan_to_num(design.lloq, nan=0.0)
    values = np.empty((n, design.n_obs))
    for r, s in enumerate(picks):
        draw = np.full(X.shape[0], s)
        P = posterior.parameter_matrix(posterior.new_subjects(draw, X, rng))
        pred = predictions(run, design, P)
        values[r] = residual_draws(run.model, analytes, pred, rng, sigma=posterior.sigma_of(s))
    censored = values < lloq[None, :]
    return np.where(censored, lloq[None, :], values), censored


def pit(dv: np.ndarray, censored: np.ndarray, sims: np.ndarray, sim_censored: np.ndarray,
        rng: np.random.Generator) -> np.ndarray:
    """Probability integral transform of each record against its replicates, kept inside
    (1/(2R), 1 - 1/(2R)) so that NPD stays finite."""
    R = sims.shape[0]
    below = (sims < dv[None, :]) & ~sim_censored
    ties = (sims == dv[None, :]) & ~sim_censored
    value = (below.sum(0) + 0.5 * ties.sum(0)) / R
    # censored observation: only "below the LLOQ" is known
    frac_blq = sim_censored.mean(0)
    value = np.where(censored, rng.uniform(0, 1, len(dv)) * frac_blq, value)
    return np.clip(value, 0.5 / R, 1 - 0.5 / R)


def _strata(cohort) -> pd.DataFrame:
    cols = [c for c in ("product", "dose_level", "lymphodepletion", "disease") if c in cohort.subjects]
    frame = cohort.subjects[cols].copy()
    frame["dose_group"] = frame.get("product", "").astype(str) + " " + frame.get("dose_level", "").astype(str)
    return frame.astype(str)


def _curves(run: Run, posterior: PosteriorDraws, picks: np.ndarray, X: np.ndarray) -> pd.DataFrame:
    """IPRED median and band, and PRED, on a fine grid up to the last fitted record."""
    cohort = run.cohort
    last = float(cohort.observations["time"].max())
    grid = fine_schedule()
    grid = grid[grid <= max(last, 1.0)]
    template = template_cohort(run.model, cohort.subjects, cohort.doses, grid, posterior.analytes)
    design = Design(run.model, template, analytes=posterior.analytes)
    draws = np.stack([predictions(run, design, posterior.parameter_matrix(np.log(posterior.theta[s])))
                      for s in picks])
    typical = posterior.point_typical_log(X)
    return pd.DataFrame({
        "subject": np.asarray(cohort.subject_ids)[design.subject_index], "time": design.time,
        "analyte": np.asarray(design.analyte_names)[design.analyte],
        "pred": predictions(run, design, posterior.parameter_matrix(typical)),
        "ipred": np.median(draws, axis=0), "ipred_lo": np.quantile(draws, BAND[0], axis=0),
        "ipred_hi": np.quantile(draws, BAND[1], axis=0)})
