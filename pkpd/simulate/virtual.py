"""Virtual cohorts: subjects drawn from a model's population, observed like a trial.

The result is a Cohort, so it feeds NCA and fitting directly. Reproducible with a seed.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from .. import analytes as catalogue
from ..data.cohort import Cohort, DOSE_COLUMNS, EVENT_COLUMNS, OBSERVATION_COLUMNS, dose_frame, in_subject_order
from ..units import dose_unit
from ..data.read import PRODUCTS, format_dose
from ..models import Model
from .predict import predict

MONTHS = [round(30.4167 * k) for k in range(1, 13)]


def trial_schedule(baseline: bool = False) -> np.ndarray:
    """The trials' sampling days: 0, 3, ..., 27, then monthly to day 365 (optionally day -1)."""
    days = [*range(0, 28, 3), *MONTHS]
    return np.array(([-1.0] if baseline else []) + [float(d) for d in days])


def fine_schedule() -> np.ndarray:
    """A dense grid for typical curves: 0.25 d apart in month 1, daily to day 365."""
    return np.concatenate([np.arange(0, 30, 0.25), np.arange(30, 366, 1.0)])


class Dose(NamedTuple):
    """A dose as given ('1.5 mg/kg'): amount, unit, and the absolute amount for a body weight."""

    amount: float
    unit: str
    absolute: float
    absolute_unit: str


def parse_dose(text: str | float, weight: float = 70.0, default_unit: str = "cells") -> Dose:
    """'3e8' -> 3e8 cells; '1e6/kg' -> 1e6 cells/kg (absolute: 1e6 x weight); '100 mg',
    '1.5 mg/kg': the unit after the number (`default_unit` when there is none)."""
    if isinstance(text, (int, float)):
        amount, unit_text = float(text), default_unit
    else:
        match = re.fullmatch(r"\s*([0-9.]+(?:[eE][+\-]?\d+)?)\s*(.*?)\s*", str(text))
        if not match:
            raise ValueError(f"dose {text!r} is not an amount with an optional unit: 3e8 (cells), 1e6/kg, "
                             "100 mg or 1.5 mg/kg")
        amount = float(match.group(1))
        unit_text = match.group(2) or default_unit
        if unit_text.startswith("/"):
            unit_text = default_unit.split("/")[0] + unit_text
    unit = dose_unit(unit_text)
    if unit is None:
        raise ValueError(f"dose {text!r}: unknown unit {unit_text!r}; use cells, cells/kg, mg, mg/kg, ug, ...")
    if not (amount > 0 and math.isfinite(amount)):
        raise ValueError(f"dose {text!r} must be positive and finite")
    if not weight > 0:
        raise ValueError(f"weight {weight} must be positive (kg)")
    return Dose(amount, unit.text, amount * weight if unit.per_kg else amount, unit.absolute)


def template_cohort(model: Model, subjects: pd.DataFrame, doses: pd.DataFrame,
                    times: Sequence[float] | pd.DataFrame, analytes: Sequence[str] | None = None,
                    source: str = "simulation") -> Cohort:
    """A Cohort with observation records (values NaN) at `times` for every subject.

    subjects: index subject; columns as Cohort.subjects. doses: as Cohort.doses.
    times: one schedule for all (nominal = actual), or a frame subject/time/nominal_time."""
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
    events = pd.DataFrame(columns=EVENT_COLUMNS).astype({"time": float, "nominal_time": float, "evid": int})
    return Cohort(subjects=subjects, doses=in_subject_order(doses[DOSE_COLUMNS], subjects.index),
                  observations=obs[OBSERVATION_COLUMNS], events=events, analytes=known, source=source)


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
                   sigma: Mapping[str, float | np.ndarray] | None = None) -> np.ndarray:
    """Observed values: predictions with each analyte's residual error.

    sigma: per analyte, an SD or an array of SDs aligned with the records (e.g. one posterior
    draw per record); default the model's."""
    out = np.array(pred, float)
    z = rng.standard_normal(len(out))
    for analyte, obs in model.observations.items():
        rows = analytes == analyte
        if not rows.any():
            continue
        f = out[rows]
        sd = np.asarray((sigma or {}).get(analyte, obs.sigma), float)
        sd = sd[rows] if sd.ndim else sd
        if obs.error == "log":
            out[rows] = f * np.exp(sd * z[rows])
        elif obs.error == "proportional":
            out[rows] = f * (1 + sd * z[rows])
        else:
            out[rows] = f + np.sqrt(obs.additive**2 + (sd * f) ** 2) * z[rows]
    return out


def observe(model: Model, template: Cohort, params: pd.DataFrame | None, rng, *, residual: bool = True,
            lloq: Mapping[str, float] | None = None) -> Cohort:
    """Fill a template's values: predictions, residual error, and censoring below the LLOQ."""
    obs = template.observations.copy()
    pred = predict(model, template, params).to_numpy()
    values = residual_draws(model, obs["analyte"].to_numpy(), pred, rng) if residual else pred
    limits = {a: (catalogue.BY_NAME[a].lloq if a in catalogue.BY_NAME else None) for a in template.analytes}
    limits.update(dict(lloq or {}))
    obs["lloq"] = obs["analyte"].map(lambda a: limits.get(a) or np.nan).astype(float)
    below = values < obs["lloq"].to_numpy()
    obs["censored"] = below.astype(int)
    obs["value"] = np.where(below, obs["lloq"], values)
    return Cohort(template.subjects, template.doses, obs, template.events, template.analytes,
                  template.source)


def simulate(model: Model, doses: Sequence[str | float] = ("1e6/kg",), n: int = 10, *,
             seed: int | None = None, product: str = "CD19", lymphodepletion: bool = True,
             weight: float = 70.0, disease: str = "SLE", times: Sequence[float] | None = None,
             analytes: Sequence[str] | None = None, iiv: bool = True, residual: bool = True,
             omega: Mapping[str, float] | None = None,
             correlation: Mapping[tuple[str, str], float] | None = None,
             typical: Mapping[str, float] | None = None, lloq: Mapping[str, float] | None = None,
             return_parameters: bool = False):
    """A virtual trial: `n` subjects per dose level, observed on `times` (default: the
    trials' schedule with a pre-infusion baseline), with inter-individual variability,
    residual error and censoring below each analyte's LLOQ.

    doses: cells ('3e8') or cells per kg ('1e6/kg', with `weight`).
    Returns a Cohort (and the individual parameters when `return_parameters`)."""
    if n < 1:
        raise ValueError("n must be at least 1 subject per dose level")
    if product not in PRODUCTS:
        raise ValueError(f"product {product!r} is not one of {', '.join(PRODUCTS)}")
    rng = np.random.default_rng(seed)
    parsed = [parse_dose(d, weight) for d in doses]
    ids = [str(i + 1) for i in range(n * len(parsed))]
    level = [format_dose(d.amount, d.unit) for d in parsed for _ in range(n)]
    index = pd.Index(ids, name="subject", dtype=object)
    subjects = pd.DataFrame({
        "dose_level": pd.Series(level, index=index, dtype=object),
        "product": pd.Series(product, index=index, dtype=object),
        "lymphodepletion": pd.Series(bool(lymphodepletion), index=index, dtype="boolean"),
        "disease": pd.Series(disease, index=index, dtype=object),
        "weight": float(weight), "age": np.nan, "sex": pd.Series(pd.NA, index=index, dtype=object),
    }, index=index)
    dose_rows = dose_frame(subject=ids, time=0.0, amount=[d.amount for d in parsed for _ in range(n)],
                           unit=[d.unit for d in parsed for _ in range(n)],
                           absolute=[d.absolute for d in parsed for _ in range(n)],
                           absolute_unit=[d.absolute_unit for d in parsed for _ in range(n)])
    schedule = trial_schedule(baseline=True) if times is None else np.asarray(times, float)
    template = template_cohort(model, subjects, dose_rows, schedule, analytes,
                               source=f"simulate({model.name}, seed={seed})")
    params = draw_parameters(model, len(ids), rng, iiv=iiv, omega=omega, correlation=correlation,
                             typical=typical)
    params.index = pd.Index(ids, name="subject")
    cohort = observe(model, template, params, rng, residual=residual, lloq=lloq)
    return (cohort, params) if return_parameters else cohort


def simulate_typical(model: Model, doses: Sequence[str | float] = ("1e6/kg",), *, product: str = "CD19",
                     lymphodepletion: bool = True, weight: float = 70.0,
                     times: Sequence[float] | None = None, **options) -> Cohort:
    """The typical subject's noise-free predictions (one subject per dose) on a fine grid
    (0.25 d apart in month 1, then daily), uncensored."""
    cohort = simulate(model, doses, 1, product=product, lymphodepletion=lymphodepletion, weight=weight,
                      times=fine_schedule() if times is None else times, iiv=False, residual=False,
                      lloq={a: 0.0 for a in model.analytes}, **options)
    obs = cohort.observations.assign(lloq=np.nan)
    return Cohort(cohort.subjects, cohort.doses, obs, cohort.events, cohort.analytes,
                  f"typical {model.name}")
