"""Dose selection: probability of target attainment (PTA) over candidate doses and scenarios.

For each scenario (product x lymphodepletion, where the fit can tell them apart) and dose,
`draws` posterior draws each give `patients` new virtual patients (covariates other than dose,
product and lymphodepletion resampled from the fitted cohort), simulated with inter-individual
variability and residual error on the trials' schedule and censored below the LLOQ. Per target:

    probability  the fraction of all virtual patients attaining it (posterior predictive)
    lower/upper  the 5th and 95th percentiles over posterior draws of the per-draw fraction
                 (parameter uncertainty; with `patients` per draw it also carries binomial
                 noise of about sqrt(p(1-p)/patients))

The recommended dose of a scenario is the lowest candidate whose probability reaches
`efficacy_level` for every efficacy target while every safety target's probability stays at or
above `safety_level`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from ..data.read import format_dose
from ..fit.run import Run
from ..predict.posterior import PosteriorDraws, predictions
from ..simulate.compiled import Design
from ..simulate.virtual import parse_dose, residual_draws, template_cohort, trial_schedule
from .targets import DEFAULT_TARGETS, EXPOSURE_SUMMARY, METRICS, Target, profile_metrics

EFFICACY_LEVEL = 0.8
SAFETY_LEVEL = 0.9


@dataclass(frozen=True)
class Scenario:
    product: str
    lymphodepletion: bool

    @property
    def label(self) -> str:
        return f"{self.product} {'with' if self.lymphodepletion else 'without'} lymphodepletion"


@dataclass(frozen=True)
class DoseSelection:
    pta: pd.DataFrame        # scenario, product, lymphodepletion, dose, dose_amount, dose_unit, dose_cells
    #                          (cells/kg times the fitted cohort's median weight), target, kind,
    #                          definition, probability, lower, upper
    exposure: pd.DataFrame   # scenario, dose, analyte, metric, median, p05, p95
    patients: pd.DataFrame   # a sample of virtual patients with their metrics (exposure-response)
    recommendation: dict
    settings: dict = field(default_factory=dict)


def scenarios_for(run: Run) -> list[Scenario]:
    """Products and lymphodepletion states the fitted model distinguishes, in the fitted cohort."""
    model, subjects = run.model, run.cohort.subjects
    symbols = {str(x) for e in [*model.symbols["rhs"], *model.symbols["initial"],
                                 *model.symbols["observe"].values()] for x in e.free_symbols}
    effects = {c.covariate for c in run.spec.covariates}
    products = sorted(subjects["product"].dropna().astype(str).unique()) or ["CD19"]
    if not ({"cov_bcma", "cov_cd20"} & symbols or "product" in effects):
        products = [subjects["product"].dropna().astype(str).mode().iloc[0]] if subjects["product"].notna().any() \
            else ["CD19"]
    ld_values = subjects["lymphodepletion"].dropna().astype(bool)
    if "cov_ld" in symbols or "lymphodepletion" in effects:
        lds = [True, False]
    else:
        lds = [bool(ld_values.mode().iloc[0])] if len(ld_values) else [True]
    return [Scenario(p, ld) for p in products for ld in lds]


def default_doses(run: Run) -> list[str]:
    """Seven doses on a log grid from a third of the lowest to twice the highest fitted dose."""
    cells = run.cohort.doses["cells"].to_numpy(float)
    grid = np.geomspace(cells.min() / 3, cells.max() * 2, 7)
    return [f"{float(f'{x:.2g}'):.2e}" for x in grid]


def select_dose(run: Run, doses: Sequence[str | float] | None = None, *,
                targets: Sequence[Target] = DEFAULT_TARGETS, scenarios: Sequence[Scenario] | None = None,
                draws: int = 100, patients: int = 40, efficacy_level: float = EFFICACY_LEVEL,
                safety_level: float = SAFETY_LEVEL, seed: int = 0) -> DoseSelection:
    """PTA over doses x scenarios, exposure summaries, and the recommended doses."""
    for name, level in (("efficacy_level", efficacy_level), ("safety_level", safety_level)):
        if not 0 < level < 1:
            raise ValueError(f"{name} must be a probability between 0 and 1, not {level}")
    if draws < 10 or patients < 1:
        raise ValueError("draws must be at least 10 and patients at least 1")
    doses = list(doses) if doses else default_doses(run)
    parsed = [(str(d), *parse_dose(d)) for d in doses]  # validates every dose before any work
    scenarios = list(scenarios) if scenarios else scenarios_for(run)
    posterior = PosteriorDraws.from_run(run)
    usable, skipped = [], []
    for target in targets:
        if target.analyte not in posterior.analytes:
            skipped.append({"target": target.name, "reason": f"the fit did not include {target.analyte} "
                            f"(fitted: {', '.join(posterior.analytes)}); its prediction would not be informed by data"})
        else:
            usable.append(target)
    exposure = [(a, m) for a, m in EXPOSURE_SUMMARY if a in posterior.analytes]
    analytes = sorted({t.analyte for t in usable} | {a for a, _ in exposure})
    if not usable:
        raise ValueError("no target can be evaluated: " + "; ".join(s["reason"] for s in skipped))
    rng = np.random.default_rng(seed)
    picks = posterior.pick(draws, rng)
    typical_weight = float(run.cohort.subjects["weight"].astype(float).median())
    pta_rows, exposure_rows, sample = [], [], []
    for scenario in scenarios:
        for text, amount, unit, _ in parsed:
            metrics = _simulate_metrics(run, posterior, picks, patients, scenario, amount, unit,
                                        usable, exposure, analytes, rng)
            draw_of = np.repeat(np.arange(len(picks)), patients)
            for target in usable:
                hit = target.attained(metrics[(target.analyte, target.metric)])
                per_draw = np.bincount(draw_of, weights=hit, minlength=len(picks)) / patients
                pta_rows.append({"scenario": scenario.label, "product": scenario.product,
                                 "lymphodepletion": scenario.lymphodepletion, "dose": format_dose(amount, unit),
                                 "dose_amount": amount, "dose_unit": unit,
                                 "dose_cells": amount * typical_weight if unit == "cells/kg" else amount,
                                 "target": target.name,
                                 "kind": target.kind, "definition": target.label,
                                 "probability": float(hit.mean()), "lower": float(np.quantile(per_draw, 0.05)),
                                 "upper": float(np.quantile(per_draw, 0.95))})
            for analyte, metric in exposure:
                v = metrics[(analyte, metric)]
                v = v[np.isfinite(v)]
                exposure_rows.append({"scenario": scenario.label, "dose": format_dose(amount, unit),
                                      "dose_amount": amount, "analyte": analyte, "metric": metric,
                                      "median": float(np.median(v)) if v.size else np.nan,
                                      "p05": float(np.quantile(v, 0.05)) if v.size else np.nan,
                                      "p95": float(np.quantile(v, 0.95)) if v.size else np.nan})
            keep = rng.choice(len(draw_of), min(len(draw_of), 200), replace=False)
            sample.append(pd.DataFrame({f"{a}_{m}": v[keep] for (a, m), v in metrics.items()})
                          .assign(scenario=scenario.label, dose=format_dose(amount, unit), dose_amount=amount))
    pta = pd.DataFrame(pta_rows)
    settings = {"doses": [p[0] for p in parsed], "draws": int(len(picks)), "patients": patients, "seed": seed,
                "efficacy_level": efficacy_level, "safety_level": safety_level,
                "targets": [t.__dict__ for t in usable], "scenarios": [s.label for s in scenarios],
                "schedule": "trial schedule (day -1, 0, 3, ..., 27, monthly to 365) with residual error "
                            "and censoring below the LLOQ"}
    recommendation = recommend(pta, efficacy_level, safety_level)
    recommendation.update(skipped_targets=skipped, settings=settings,
                          run={"model": run.model.name, "data_hash": run.result.tree.attrs.get("data_hash")})
    return DoseSelection(pta, pd.DataFrame(exposure_rows), pd.concat(sample, ignore_index=True),
                         recommendation, settings)


def _simulate_metrics(run, posterior, picks, patients, scenario, amount, unit, targets, exposure, analytes, rng):
    """{(analyte, metric): values of the draws x patients virtual patients}."""
    fitted = run.cohort.subjects
    M = len(picks) * patients
    donors = rng.integers(0, len(fitted), M)
    weight = fitted["weight"].astype(float).fillna(70.0).to_numpy()[donors]
    cells = amount * weight if unit == "cells/kg" else np.full(M, amount)
    ids = pd.Index([f"V{i + 1}" for i in range(M)], name="subject", dtype=object)
    subjects = pd.DataFrame({
        "dose_level": pd.Series(format_dose(amount, unit), index=ids, dtype=object),
        "product": pd.Series(scenario.product, index=ids, dtype=object),
        "lymphodepletion": pd.Series(scenario.lymphodepletion, index=ids, dtype="boolean"),
        "disease": pd.Series(fitted["disease"].astype(object).to_numpy()[donors], index=ids, dtype=object),
        "weight": weight, "age": np.nan, "sex": pd.Series(pd.NA, index=ids, dtype=object)}, index=ids)
    dose_rows = pd.DataFrame({"subject": list(ids), "time": 0.0, "nominal_time": 0.0, "amount": amount,
                              "unit": unit, "cells": cells, "evid": 1})
    times = trial_schedule(baseline=True)
    template = template_cohort(run.model, subjects, dose_rows, times, analytes, source="dose selection")
    design = Design(run.model, template, analytes=analytes)
    draw = np.repeat(picks, patients)
    P = posterior.parameter_matrix(posterior.new_subjects(draw, posterior.covariates(template), rng))
    pred = predictions(run, design, P)
    names = np.asarray(design.analyte_names)[design.analyte]
    # each record's residual SD from its patient's posterior draw
    values = residual_draws(run.model, names, pred, rng, sigma=posterior.sigma_of(draw[design.subject_index]))
    lloq = _lloq(run)
    out = {}
    wanted = {(t.analyte, t.metric) for t in targets} | set(exposure)
    for analyte in analytes:
        rows = names == analyte
        v = values[rows].reshape(M, len(times))
        limit = lloq.get(analyte, 0.0)
        cens = v < limit
        v = np.where(cens, limit, v)
        limits = np.full(len(times), limit)
        kinds = {METRICS[m] for a, m in wanted if a == analyte}
        for kind in kinds:
            per_patient = [profile_metrics(times, v[i], cens[i], limits, kind) for i in range(M)]
            for a, m in wanted:
                if a == analyte and METRICS[m] == kind:
                    out[(a, m)] = np.array([float(r[m]) if r[m] is not None and r[m] is not pd.NA else np.nan
                                            for r in per_patient])
    return out


def _lloq(run: Run) -> dict[str, float]:
    """Each analyte's LLOQ as in the fitted data (median over records)."""
    obs = run.cohort.observations
    return {a: float(g["lloq"].median()) for a, g in obs.groupby("analyte") if g["lloq"].notna().any()}


def recommend(pta: pd.DataFrame, efficacy_level: float, safety_level: float) -> dict:
    """Per scenario, the lowest dose meeting every level; overall, the lowest such dose across
    scenarios (ties: the higher smallest efficacy probability)."""
    out = {"efficacy_level": efficacy_level, "safety_level": safety_level, "scenarios": {}}
    best = None
    for scenario, group in pta.groupby("scenario", sort=False):
        chosen = None
        for dose, rows in sorted(group.groupby("dose", sort=False), key=lambda kv: kv[1]["dose_cells"].iloc[0]):
            eff = rows[rows["kind"] == "efficacy"]
            safe = rows[rows["kind"] == "safety"]
            if (eff["probability"] >= efficacy_level).all() and (safe["probability"] >= safety_level).all() \
                    and len(eff):
                chosen = (dose, rows)
                break
        entry = {"recommended_dose": None, "reason": ""}
        if chosen is None:
            entry["reason"] = (f"no candidate dose reaches P(efficacy) >= {efficacy_level} with "
                               f"P(safety) >= {safety_level}; widen the dose range or revisit the targets")
        else:
            dose, rows = chosen
            entry.update(recommended_dose=dose, dose_amount=float(rows["dose_amount"].iloc[0]),
                         dose_unit=str(rows["dose_unit"].iloc[0]),
                         probabilities={r["target"]: {"kind": r["kind"], "definition": r["definition"],
                                                      "probability": r["probability"], "lower": r["lower"],
                                                      "upper": r["upper"]} for _, r in rows.iterrows()})
            score = (float(rows["dose_cells"].iloc[0]), -float(rows.loc[rows["kind"] == "efficacy", "probability"].min()))
            if best is None or score < best[0]:
                best = (score, scenario, entry)
        out["scenarios"][scenario] = entry
    out["recommended"] = None if best is None else {"scenario": best[1], **best[2]}
    return out
