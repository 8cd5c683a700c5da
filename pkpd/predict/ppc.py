"""Posterior-predictive quantities for the observed subjects.

- IPRED: the individual prediction at each record, median and `ci_prob` band (90% by default)
  over posterior draws of the subject's own parameters; PRED: the typical subject with the
  subject's covariates (posterior medians of mu and beta, random effects zero).
- Replicates: the whole cohort simulated again R times, each from one posterior draw of the
  population (new random effects, residual error, and censoring below each record's LLOQ the
  same way as the data); the VPC and the PIT residuals use them.
- PIT: the fraction of replicates below the observed value (a censored observation draws its
  PIT uniformly between 0 and the replicates' fraction below the LLOQ, seeded); NPD =
  Phi^-1(PIT), the normalised prediction discrepancy (not decorrelated within a subject, so
  NPD rather than NPDE).
- Curves: IPRED bands and PRED on a grid spanning each subject's data, dense after every dose
  (`pkpd.simulate.curve_grid`), so that fast dynamics (an absorption peak, CAR-T expansion)
  are drawn; the subject's own doses, events and time-varying covariates apply.
Times are in the cohort's time unit (`time_unit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..fit.result import FitResult
from ..simulate.compiled import Design
from ..simulate.virtual import curve_grid, residual_draws, template_cohort
from .average import ModelAverage
from .posterior import PosteriorDraws, predictions

CI_PROB = 0.9  # the IPRED bands


@dataclass(frozen=True)
class PosteriorPredictive:
    records: pd.DataFrame   # one row per fitted record: subject, time, nominal_time, analyte, dv,
    #                         lloq, censored, stratum columns, pred, ipred, ipred_lo, ipred_hi, pit, npd
    replicates: np.ndarray  # (R, n_records) simulated values (censored ones hold the LLOQ)
    replicate_censored: np.ndarray  # (R, n_records) bool
    curves: pd.DataFrame    # subject, analyte, time, pred, ipred, ipred_lo, ipred_hi
    units: dict             # analyte -> unit
    time_unit: str          # of every time above (the cohort's)
    ci_prob: float          # width of the IPRED bands
    models: dict = field(default_factory=dict)  # the fit(s) simulated: ModelAverage.describe()


def posterior_predictive(result: FitResult | ModelAverage, *, replicates: int = 200, draws: int = 100,
                         seed: int = 0, ci_prob: float = CI_PROB) -> PosteriorPredictive:
    """IPRED/PRED at the records and on a fine grid, `replicates` replicates of the cohort, PIT
    and NPD; `draws` posterior draws for the IPRED bands of width `ci_prob`. A ModelAverage
    (pkpd.predict.average) gives each fit its weight's share of the draws and replicates, and
    PRED is the weighted median of the fits' PRED."""
    if replicates < 20:
        raise ValueError(f"replicates must be at least 20 (percentile bands and PIT need them), not {replicates}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    if not 0 < ci_prob < 1:
        raise ValueError(f"ci_prob must lie between 0 and 1, not {ci_prob}")
    rng = np.random.default_rng(seed)
    average = ModelAverage.of(result)
    cohort, first = average.cohort, average.members[0]
    analytes = first.analytes
    lo, hi = (1 - ci_prob) / 2, 1 - (1 - ci_prob) / 2
    ipred, pred, sims, cens, curve_draws, curve_pred = [], [], [], [], [], []
    design = curve_design = None
    for member, n_draws, n_reps in zip(average.members, average.allocate(draws), average.allocate(replicates)):
        posterior = PosteriorDraws.from_result(member)
        mine = Design(member.model, cohort, analytes=analytes)
        if design is not None and not np.array_equal(mine.records, design.records):
            raise ValueError("the averaged fits do not use the same records of the cohort; average fits of the same data")
        design = mine
        X = posterior.covariates(cohort)
        picks = posterior.pick(n_draws, rng)
        ipred += [predictions(member, design, posterior.parameter_matrix(np.log(posterior.theta[s]))) for s in picks]
        pred.append(predictions(member, design, posterior.parameter_matrix(posterior.point_typical_log(X))))
        if n_reps:
            values, censored = simulate_replicates(member, posterior, design, X, n_reps, rng)
            sims.append(values)
            cens.append(censored)
        curve_design, draws_m, pred_m = _curves(member, posterior, picks, X)
        curve_draws.append(draws_m)
        curve_pred.append(pred_m)
    weights = np.asarray(average.weights)
    ipred_draws = np.stack(ipred)
    sims, sim_cens = np.concatenate(sims), np.concatenate(cens)
    obs = cohort.observations.loc[design.records]
    records = pd.DataFrame({
        "subject": obs["subject"].to_numpy(), "time": design.data_time,
        "nominal_time": obs["nominal_time"].to_numpy(float),
        "analyte": np.asarray(design.analyte_names)[design.analyte], "dv": design.value,
        "lloq": design.lloq, "censored": design.censored == 1, "pred": weighted_median(np.stack(pred), weights),
        "ipred": np.median(ipred_draws, axis=0), "ipred_lo": np.quantile(ipred_draws, lo, axis=0),
        "ipred_hi": np.quantile(ipred_draws, hi, axis=0)})
    records = records.join(strata(cohort), on="subject")
    records["pit"] = pit(records["dv"].to_numpy(), records["censored"].to_numpy(), sims, sim_cens, rng)
    from scipy.special import ndtri  # the normal quantile; scipy.stats costs 0.5 s of every start

    records["npd"] = ndtri(records["pit"])
    grid = np.concatenate(curve_draws)
    curves = pd.DataFrame({
        "subject": np.asarray(cohort.subject_ids)[curve_design.subject_index], "time": curve_design.data_time,
        "analyte": np.asarray(curve_design.analyte_names)[curve_design.analyte],
        "pred": weighted_median(np.stack(curve_pred), weights), "ipred": np.median(grid, axis=0),
        "ipred_lo": np.quantile(grid, lo, axis=0), "ipred_hi": np.quantile(grid, hi, axis=0)})
    units = {a: first.model.observations[a].unit for a in analytes}
    return PosteriorPredictive(records, sims, sim_cens, curves, units, cohort.time_unit, ci_prob, average.describe())


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per column of `values` (members x points), the median of the members under `weights`."""
    if values.shape[0] == 1:
        return values[0]
    order = np.argsort(values, axis=0)
    cumulative = np.cumsum(np.asarray(weights)[order], axis=0)
    index = np.argmax(cumulative >= 0.5 * cumulative[-1], axis=0)
    return np.take_along_axis(values, order, axis=0)[index, np.arange(values.shape[1])]


def simulate_replicates(result: FitResult, posterior: PosteriorDraws, design: Design, X: np.ndarray, n: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(values, censored), each (n, n_records): the cohort simulated n times from the posterior."""
    picks = posterior.pick(n, rng)
    analytes = np.asarray(design.analyte_names)[design.analyte]
    lloq = np.nan_to_num(design.lloq, nan=0.0)
    values = np.empty((n, design.n_obs))
    for r, s in enumerate(picks):
        draw = np.full(X.shape[0], s)
        P = posterior.parameter_matrix(posterior.new_subjects(draw, X, rng))
        pred = predictions(result, design, P)
        sigma, additive = posterior.residual_of(s)
        values[r] = residual_draws(result.model, analytes, pred, rng, sigma=sigma, additive=additive)
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


STRATA = ("product", "dose_level", "dose_group", "lymphodepletion", "disease")


def strata(cohort) -> pd.DataFrame:
    """The columns a VPC can be stratified by, per subject (as text; 'all' is one stratum)."""
    subjects = cohort.subjects
    frame = pd.DataFrame(index=subjects.index)
    for column in ("product", "dose_level", "lymphodepletion", "disease"):
        frame[column] = subjects[column].astype(object).where(subjects[column].notna(), "not recorded").astype(str) \
            if column in subjects else "not recorded"
    frame["dose_group"] = (frame["product"] + " " + frame["dose_level"]).str.replace("not recorded ", "")
    frame["all"] = "all subjects"
    return frame


def _curves(result: FitResult, posterior: PosteriorDraws, picks: np.ndarray, X: np.ndarray):
    """(design, IPRED draws, PRED) on a grid over each subject's data (dense after doses)."""
    cohort = result.cohort
    obs = cohort.observations
    doses = cohort.dose_records()
    frames = []
    for s in cohort.subject_ids:
        mine = obs["time"][obs["subject"] == s]
        first = float(doses.loc[doses["subject"] == s, "time"].min())
        end = max(float(mine.max()) if len(mine) else first, first)
        start = min(float(mine.min()) if len(mine) else first, first)
        grid = curve_grid(end, doses.loc[doses["subject"] == s, "time"].tolist(), start=start, points=200)
        frames.append(pd.DataFrame({"subject": s, "time": grid, "nominal_time": grid}))
    template = template_cohort(result.model, cohort.subjects, cohort.doses, pd.concat(frames, ignore_index=True),
                               posterior.analytes, time_unit=cohort.time_unit, events=cohort.events)
    design = Design(result.model, template, analytes=posterior.analytes)
    draws = [predictions(result, design, posterior.parameter_matrix(np.log(posterior.theta[s]))) for s in picks]
    typical = predictions(result, design, posterior.parameter_matrix(posterior.point_typical_log(X)))
    return design, np.stack(draws) if draws else np.empty((0, design.n_obs)), typical
