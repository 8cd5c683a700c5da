"""Virtual cohorts: subjects drawn from a model's population, observed like a trial.

The result is a Cohort, so it feeds NCA and fitting directly. Reproducible with a seed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import analytes as catalogue
from ..data.cohort import Cohort, DOSE_COLUMNS, EVENT_COLUMNS, OBSERVATION_COLUMNS, in_subject_order
from ..data.read import PRODUCTS, format_dose
from ..models import Model
from ..units import time_factor
from .compiled import Tolerances
from .predict import predict
from .regimen import Regimen, parse_regimen

MONTHS = [round(30.4167 * k) for k in range(1, 13)]


def trial_schedule(baseline: bool = False) -> np.ndarray:
    """The trials' sampling days: 0, 3, ..., 27, then monthly to day 365 (optionally day -1)."""
    days = [*range(0, 28, 3), *MONTHS]
    return np.array(([-1.0] if baseline else []) + [float(d) for d in days])


def fine_schedule(model: Model | None = None, regimens: Sequence[Regimen] = ()) -> np.ndarray:
    """A dense grid for curves: for a model in days (or none) 0.25 d apart in month 1, daily
    to day 365; otherwise `curve_grid` over the span of `default_schedule`."""
    if model is None or model.time_unit == "d":
        last = max([r.last_dose("d") for r in regimens] + [0.0])
        base = np.concatenate([np.arange(0, 30, 0.25), np.arange(30, 366, 1.0)])
        return np.unique(np.concatenate([base, last + base]))
    doses = sorted({t for r in regimens for t in r.doses("x", 70.0, model.time_unit)["time"]} | {0.0})
    return curve_grid(float(default_schedule(model, regimens).max()), doses)


def curve_grid(end: float, dose_times: Sequence[float], start: float = 0.0, points: int = 400) -> np.ndarray:
    """Times for drawing a curve from `start` to `end`: evenly spaced, plus log-spaced times after
    every dose (from 1e-4 of the span), so that a peak shortly after a dose (absorption, an
    infusion's end, CAR-T expansion) is drawn however long the span is."""
    span = max(end - start, 1e-9)
    grid = [np.linspace(start, end, points)]
    doses = sorted(t for t in dose_times if start <= t <= end)
    per_dose = max(12, 240 // max(len(doses), 1))
    for k, t in enumerate(doses):
        until = doses[k + 1] if k + 1 < len(doses) else end
        if until > t:
            grid.append(t + np.geomspace(1e-4 * span, until - t, per_dose))
    return np.unique(np.concatenate(grid))


def default_schedule(model: Model, regimens: Sequence[Regimen] = ()) -> np.ndarray:
    """Sampling times (model time unit) when none are given: the CAR-T trials' schedule for a
    model in days (day -1, 0, 3, ..., 27, monthly to day 365); for a model in hours a PK
    schedule (pre-dose, 0.25-72 h) after the first and the last dose of the regimens."""
    if model.time_unit == "d":
        last = max([r.last_dose("d") for r in regimens] + [0.0])
        return np.unique(np.concatenate([trial_schedule(baseline=True), last + trial_schedule()]))
    pk = np.array([0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 24, 36, 48, 72.0]) * time_factor("h", model.time_unit)
    last = max([r.last_dose(model.time_unit) for r in regimens] + [0.0])
    return np.unique(np.concatenate([[-time_factor("h", model.time_unit)], pk, last + pk]))


def template_cohort(model: Model, subjects: pd.DataFrame, doses: pd.DataFrame,
                    times: Sequence[float] | pd.DataFrame, analytes: Sequence[str] | None = None,
                    source: str = "simulation", *, time_unit: str | None = None,
                    events: pd.DataFrame | None = None) -> Cohort:
    """A Cohort with observation records (values NaN) at `times` for every subject.

    subjects: index subject; columns as Cohort.subjects. doses: as Cohort.doses.
    times: one schedule for all (nominal = actual), or a frame subject/time/nominal_time.
    time_unit: of the times and doses (default: the model's); events: EVID 2/3 rows to keep
    (time-varying covariates, resets)."""
    analytes = list(analytes or model.analytes)
    unknown = sorted(set(analytes) - set(model.analytes))
    if unknown:
        raise ValueError(f"model {model.name} does not predict {', '.join(unknown)}")
    if isinstance(times, pd.DataFrame):
        grid = times[["subject", "time", "nominal_time"]]
    else:
        t = np.asarray(times, float)
        grid = pd.DataFrame({"subject": np.repeat(subjects.index.to_numpy(), len(t)),
                             "time": np.tile(t, len(subjects)), "nominal_time": np.tile(t, len(subjects))})
    obs = grid.loc[grid.index.repeat(len(analytes))].reset_index(drop=True)
    obs["analyte"] = np.tile(analytes, len(grid))
    obs = obs.assign(value=np.nan, lloq=np.nan, censored=0, limit=np.nan, mdv=False)
    obs = in_subject_order(obs, subjects.index, ("time", "analyte"))
    known = {a: catalogue.BY_NAME.get(a) or catalogue.custom(a, model.observations[a].unit)
             for a in analytes}
    if events is None:
        events = pd.DataFrame(columns=EVENT_COLUMNS).astype({"time": float, "nominal_time": float, "evid": int})
    return Cohort(subjects=subjects, doses=in_subject_order(doses[DOSE_COLUMNS], subjects.index),
                  observations=obs[OBSERVATION_COLUMNS], events=events, analytes=known, source=source,
                  time_unit=time_unit or model.time_unit)


def draw_parameters(model: Model, n: int, rng: np.random.Generator, *, iiv: bool = True,
                    omega: Mapping[str, float] | None = None,
                    correlation: Mapping[tuple[str, str], float] | None = None,
                    typical: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Individual parameters: typical * exp(eta), eta ~ N(0, Omega).

    omega: SD of eta per parameter (default: each parameter's `iiv`; 0 or None = none);
    correlation: {(p1, p2): r} between random effects."""
    names = model.parameter_names
    typical = {**model.typical, **dict(typical or {})}
    sd = {p.name: (p.iiv or 0.0) for p in model.parameters}
    if omega is not None:
        unknown = sorted(set(omega) - set(names))
        if unknown:
            raise ValueError(f"omega names unknown parameter(s) {', '.join(unknown)}")
        sd.update({k: float(v or 0.0) for k, v in omega.items()})
    varying = [p for p in names if iiv and sd[p] > 0]
    eta = np.zeros((n, len(varying)))
    if varying:
        corr = np.eye(len(varying))
        for (a, b), r in dict(correlation or {}).items():
            if a not in varying or b not in varying:
                raise ValueError(f"correlation ({a}, {b}) needs both parameters to vary between subjects")
            i, j = varying.index(a), varying.index(b)
            corr[i, j] = corr[j, i] = r
        s = np.array([sd[p] for p in varying])
        cov = corr * np.outer(s, s)
        try:
            chol = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError as exc:
            raise ValueError("the correlation matrix of the random effects is not positive definite") from exc
        eta = rng.standard_normal((n, len(varying))) @ chol.T
    out = pd.DataFrame({p: np.full(n, float(typical[p])) for p in names})
    for k, p in enumerate(varying):
        out[p] = out[p] * np.exp(eta[:, k])
    return out


def residual_draws(model: Model, analytes: np.ndarray, pred: np.ndarray, rng,
                   sigma: Mapping[str, float | np.ndarray] | None = None,
                   additive: Mapping[str, float | np.ndarray] | None = None) -> np.ndarray:
    """Observed values: predictions with each analyte's residual error.

    sigma, additive: per analyte, the log-scale or proportional SD and the additive SD: a value
    or an array aligned with the records (e.g. one posterior draw per record); default the
    model's."""
    out = np.array(pred, float)
    z = rng.standard_normal(len(out))
    codes, present = pd.factorize(np.asarray(analytes))  # one pass over the names, not one per analyte
    for k, analyte in enumerate(present):
        if analyte not in model.observations:
            continue
        obs, rows = model.observations[analyte], codes == k

        def sd_of(table, default):
            value = np.asarray((table or {}).get(analyte, default), float)
            return value[rows] if value.ndim else value

        out[rows] = with_residual_error(obs.error, out[rows], sd_of(sigma, obs.sigma), sd_of(additive, obs.additive),
                                        z[rows])
    return out


def with_residual_error(error: str, f: np.ndarray, sigma, additive, z: np.ndarray) -> np.ndarray:
    """Predictions f with one residual draw (standard normal z, same shape) of the error model
    `error` (log, proportional, additive, combined or combined1) with SDs `sigma` and `additive`."""
    if error == "log":
        return f * np.exp(sigma * z)
    if error == "proportional":
        return f * (1 + sigma * z)
    if error == "additive":
        return f + additive * z
    if error == "combined1":
        return f + (additive + sigma * f) * z
    return f + np.sqrt(additive**2 + (sigma * f) ** 2) * z


def observe(model: Model, template: Cohort, params: pd.DataFrame | None, rng, *, residual: bool = True,
            lloq: Mapping[str, float] | None = None, steps: Tolerances | None = None) -> Cohort:
    """Fill a template's values: predictions (`steps`: as in `predict`), residual error, and
    censoring below the LLOQ."""
    obs = template.observations.copy()
    pred = predict(model, template, params, steps).to_numpy()
    values = residual_draws(model, obs["analyte"].to_numpy(), pred, rng) if residual else pred
    limits = {}
    for a in template.analytes:
        declared = model.observations[a].lloq if a in model.observations else None
        known = catalogue.BY_NAME[a].lloq if a in catalogue.BY_NAME else None
        # a natural-scale error model can give negative values: they are censored at 0
        natural = a in model.observations and model.observations[a].error != "log"
        limit = dict(lloq or {}).get(a, declared if declared is not None else known)
        limits[a] = limit if limit else (0.0 if natural and residual else np.nan)
    codes, names = pd.factorize(obs["analyte"])  # a lookup per analyte, not per row
    obs["lloq"] = np.array([limits.get(a, np.nan) for a in names] + [np.nan], float)[codes]
    below = values < obs["lloq"].to_numpy()
    obs["censored"] = below.astype(int)
    obs["value"] = np.where(below, obs["lloq"], values)
    return replace(template, observations=obs)


def simulate(model: Model, doses: Sequence[str | float | Regimen] = ("1e6/kg",), n: int = 10, *,
             seed: int | None = None, product: str | None = "CD19", lymphodepletion: bool = True,
             weight: float = 70.0, disease: str | None = "SLE", times: Sequence[float] | None = None,
             analytes: Sequence[str] | None = None, iiv: bool = True, residual: bool = True,
             omega: Mapping[str, float] | None = None,
             correlation: Mapping[tuple[str, str], float] | None = None,
             typical: Mapping[str, float] | None = None, lloq: Mapping[str, float] | None = None,
             steps: Tolerances | None = None, return_parameters: bool = False):
    """A virtual trial: `n` subjects per regimen, observed on `times` (model time unit; default
    `default_schedule`), with inter-individual variability, residual error and censoring below
    each analyte's LLOQ.

    doses: regimens (pkpd.simulate.regimen): '3e8', '1e6/kg' (with `weight`), '100 mg x6 q12h',
    '3e8 split 10/30/60 q1d + 3e8 at 90d', ...; amounts without a unit are in the model's dose
    unit. product/lymphodepletion/disease: the CAR-T covariates (product None: not recorded).
    steps: None solves with the reference solver (LSODA); `Tolerances()` with the compiled one
    the fits use (for large virtual populations: 10,000 antigen_driven subjects in 1.6 s against
    10.5 s, predictions within about 1e-4 of LSODA).
    Returns a Cohort in the model's time unit (and the individual parameters when
    `return_parameters`)."""
    if n < 1:
        raise ValueError("n must be at least 1 subject per dose level")
    if product is not None and product not in PRODUCTS:
        raise ValueError(f"product {product!r} is not one of {', '.join(PRODUCTS)}")
    if not weight > 0:
        raise ValueError(f"weight {weight} must be positive (kg)")
    rng = np.random.default_rng(seed)
    regimens = [d if isinstance(d, Regimen) else parse_regimen(d, model.dose_unit) for d in doses]
    ids = [str(i + 1) for i in range(n * len(regimens))]
    index = pd.Index(ids, name="subject", dtype=object)
    level = [r.label if r.count > 1 or r.extra or len(r.fractions) > 1 else format_dose(r.amount, r.unit)
             for r in regimens for _ in range(n)]
    subjects = pd.DataFrame({
        "dose_level": pd.Series(level, index=index, dtype=object),
        "product": pd.Series(product if product is not None else pd.NA, index=index, dtype=object),
        "lymphodepletion": pd.Series(bool(lymphodepletion) if product is not None else pd.NA, index=index,
                                     dtype="boolean"),
        "disease": pd.Series(disease if product is not None else pd.NA, index=index, dtype=object),
        "weight": float(weight), "age": np.nan, "sex": pd.Series(pd.NA, index=index, dtype=object),
    }, index=index)
    dose_rows = pd.concat([r.dose_table(ids[k * n:(k + 1) * n], np.full(n, weight), model.time_unit)
                           for k, r in enumerate(regimens)], ignore_index=True)
    schedule = default_schedule(model, regimens) if times is None else np.asarray(times, float)
    template = template_cohort(model, subjects, dose_rows, schedule, analytes,
                               source=f"simulate({model.name}, seed={seed})")
    params = draw_parameters(model, len(ids), rng, iiv=iiv, omega=omega, correlation=correlation,
                             typical=typical)
    params.index = pd.Index(ids, name="subject")
    cohort = observe(model, template, params, rng, residual=residual, lloq=lloq, steps=steps)
    return (cohort, params) if return_parameters else cohort


def simulate_typical(model: Model, doses: Sequence[str | float | Regimen] = ("1e6/kg",), *,
                     product: str | None = "CD19", lymphodepletion: bool = True, weight: float = 70.0,
                     times: Sequence[float] | None = None, **options) -> Cohort:
    """The typical subject's noise-free predictions (one subject per regimen) on a fine grid
    (`fine_schedule`), uncensored."""
    regimens = [d if isinstance(d, Regimen) else parse_regimen(d, model.dose_unit) for d in doses]
    grid = fine_schedule(model, regimens) if times is None else times
    cohort = simulate(model, regimens, 1, product=product, lymphodepletion=lymphodepletion, weight=weight,
                      times=grid, iiv=False, residual=False, lloq={a: 0.0 for a in model.analytes}, **options)
    obs = cohort.observations.assign(lloq=np.nan)
    return replace(cohort, observations=obs, source=f"typical {model.name}")
