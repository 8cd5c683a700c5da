"""Dose selection: probability of target attainment (PTA) over candidate regimens and scenarios.

For each scenario (product x lymphodepletion where the fit can tell them apart; one scenario
for a model without those covariates) and candidate regimen (a dose, or repeated, infused or
split doses: pkpd.simulate.regimen), `draws` posterior draws each give `patients` new virtual
patients (covariates other than dose, product and lymphodepletion resampled from the fitted
cohort), simulated with inter-individual variability and residual error on the fitted data's
sampling schedule (its nominal times after the first dose, or `times`) and censored below the
LLOQ. Per target:

    probability  the fraction of all virtual patients attaining it (posterior predictive)
    lower/upper  the 5th and 95th percentiles over posterior draws of the per-draw fraction
                 (parameter uncertainty; with `patients` per draw it also carries binomial
                 noise of about sqrt(p(1-p)/patients))

The recommended regimen of a scenario is the one with the lowest total amount whose probability
reaches `efficacy_level` for every efficacy target while every safety target's probability stays
at or above `safety_level`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import pandas as pd

from ..fit.result import FitResult
from ..nca import CAR_T_KINDS, CAR_T_WINDOWS, OTHER_WINDOWS, aplasia_many, exposure_many, nadir_many, window_names
from ..predict.average import ModelAverage
from ..predict.posterior import PosteriorDraws, predictions
from ..simulate.compiled import Design, Tolerances
from ..simulate.regimen import Regimen, parse_regimen
from ..simulate.virtual import template_cohort, with_residual_error
from ..units import time_factor
from .targets import DEFAULT_TARGETS, Target, metric_kind, profile_metrics, window_of

EFFICACY_LEVEL = 0.8
SAFETY_LEVEL = 0.9


@dataclass(frozen=True)
class Scenario:
    product: str | None
    lymphodepletion: bool | None

    @property
    def label(self) -> str:
        if self.product is None:
            return "all subjects"
        return f"{self.product} {'with' if self.lymphodepletion else 'without'} lymphodepletion"


@dataclass(frozen=True)
class DoseSelection:
    pta: pd.DataFrame        # scenario, product, lymphodepletion, dose (the regimen), dose_amount,
    #                          dose_unit, dose_total (absolute amount over the regimen, per-kg
    #                          doses at the fitted cohort's median weight), target, kind,
    #                          definition, probability, lower, upper
    exposure: pd.DataFrame   # scenario, dose, analyte, metric, median, p05, p95
    patients: pd.DataFrame   # a sample of virtual patients with their metrics (exposure-response)
    recommendation: dict
    settings: dict = field(default_factory=dict)


def scenarios_for(result: FitResult) -> list[Scenario]:
    """Products and lymphodepletion states the fitted model distinguishes, in the fitted cohort;
    a single scenario when the data record neither."""
    model, subjects = result.model, result.cohort.subjects
    if subjects["product"].isna().all() and subjects["lymphodepletion"].isna().all():
        return [Scenario(None, None)]
    symbols = {str(x) for e in [*model.symbols["rhs"], *model.symbols["initial"],
                                 *model.symbols["observe"].values()] for x in e.free_symbols}
    symbols |= {str(x) for d in model.symbols["dosing"] for x in d["bioavailability"].free_symbols}
    effects = {c.covariate for c in result.spec.covariates}
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


def default_doses(result: FitResult) -> list[str]:
    """Seven single doses on a log grid from a third of the lowest to twice the highest fitted
    (first) dose, in the data's absolute dose unit."""
    doses = result.cohort.doses
    first = doses.sort_values("time", kind="stable").groupby("subject").first()
    amounts = first["absolute"].to_numpy(float)
    unit = str(first["absolute_unit"].mode().iloc[0])
    grid = np.geomspace(amounts.min() / 3, amounts.max() * 2, 7)
    return [f"{float(f'{x:.2g}'):.2e} {unit}" for x in grid]


def data_schedule(result: FitResult) -> np.ndarray:
    """The fitted data's sampling schedule (nominal times since each subject's first dose, in
    the cohort's time unit), one time per distinct nominal time."""
    cohort = result.cohort
    first = cohort.dose_records().groupby("subject")["time"].min()
    obs = cohort.observations[~cohort.observations["mdv"]]
    nominal = obs["nominal_time"].to_numpy(float) - obs["subject"].map(first).to_numpy(float)
    return np.unique(np.round(nominal, 9))


def select_dose(result: FitResult | ModelAverage, doses: Sequence[str | float | Regimen] | None = None, *,
                targets: Sequence[Target] = DEFAULT_TARGETS, scenarios: Sequence[Scenario] | None = None,
                draws: int = 100, patients: int = 40, efficacy_level: float = EFFICACY_LEVEL,
                safety_level: float = SAFETY_LEVEL, times: Sequence[float] | None = None,
                seed: int = 0) -> DoseSelection:
    """PTA over candidate regimens x scenarios, exposure summaries, and the recommendations.

    result: a fit, or a ModelAverage (pkpd.predict.average), whose fits each simulate their
    weight's share of the `draws` (the scenarios are those any of them distinguishes);
    doses: regimens ('3e8', '1e6/kg', '100 mg x6 q12h', '3e8 split 10/30/60 q1d', ...; default
    `default_doses`); times: the sampling schedule (cohort time unit; default `data_schedule`)."""
    for name, level in (("efficacy_level", efficacy_level), ("safety_level", safety_level)):
        if not 0 < level < 1:
            raise ValueError(f"{name} must be a probability between 0 and 1, not {level}")
    if draws < 10 or patients < 1:
        raise ValueError(f"draws must be at least 10 and patients at least 1 (got {draws} and {patients})")
    average = ModelAverage.of(result)
    first = average.members[0]
    cohort = average.cohort
    unit = str(cohort.doses["absolute_unit"].mode().iloc[0])
    regimens = [d if isinstance(d, Regimen) else parse_regimen(d, unit) for d in (doses or default_doses(first))]
    schedule = np.asarray(times if times is not None else data_schedule(first), float)
    if schedule.size == 0 or not np.all(np.isfinite(schedule)):
        raise ValueError("the sampling times must be finite numbers (the cohort's time unit)")
    scenarios = list(scenarios) if scenarios else list(dict.fromkeys(s for m in average.members for s in scenarios_for(m)))
    fitted = first.analytes
    usable, skipped = [], []
    for target in targets:
        if target.analyte not in fitted:
            skipped.append({"target": target.name, "reason": f"the fit did not include {target.analyte} "
                            f"(fitted: {', '.join(fitted)}); its prediction would not be informed by data"})
        else:
            usable.append(target)
    exposure = _exposure_summary(first, fitted)
    analytes = sorted({t.analyte for t in usable} | {a for a, _ in exposure})
    if not usable:
        raise ValueError("no target can be evaluated: " + "; ".join(s["reason"] for s in skipped)
                         + "; give targets on the fitted analytes (--target NAME:ANALYTE:METRIC>=VALUE:KIND)")
    rng = np.random.default_rng(seed)
    members = [(VirtualPatients.build(m, posterior, scenarios, regimens, analytes, schedule), posterior.pick(n, rng))
               for m, n in zip(average.members, average.allocate(draws))
               for posterior in [PosteriorDraws.from_result(m)] if n]
    n_draws = sum(len(picks) for _, picks in members)
    typical_weight = float(cohort.subjects["weight"].astype(float).fillna(70.0).median())
    pta_rows, exposure_rows, sample = [], [], []
    wanted = {(t.analyte, t.metric) for t in usable} | set(exposure)
    for k, scenario in enumerate(scenarios):
        parts = [virtual.metrics(k, picks, patients, wanted, rng) for virtual, picks in members]
        for j, regimen in enumerate(regimens):
            total = regimen.total() * (typical_weight if regimen.unit.endswith("/kg") else 1.0)
            metrics = {key: np.concatenate([p[j][key] for p in parts]) for key in parts[0][j]}
            draw_of = np.repeat(np.arange(n_draws), patients)
            for target in usable:
                hit = target.attained(metrics[(target.analyte, target.metric)])
                per_draw = np.bincount(draw_of, weights=hit, minlength=n_draws) / patients
                pta_rows.append({"scenario": scenario.label, "product": scenario.product,
                                 "lymphodepletion": scenario.lymphodepletion, "dose": regimen.label,
                                 "dose_amount": regimen.amount, "dose_unit": regimen.unit, "dose_total": total,
                                 "target": target.name, "kind": target.kind, "definition": target.label,
                                 "probability": float(hit.mean()), "lower": float(np.quantile(per_draw, 0.05)),
                                 "upper": float(np.quantile(per_draw, 0.95))})
            for analyte, metric in exposure:
                v = metrics[(analyte, metric)]
                v = v[np.isfinite(v)]
                exposure_rows.append({"scenario": scenario.label, "dose": regimen.label,
                                      "dose_amount": regimen.amount, "analyte": analyte, "metric": metric,
                                      "median": float(np.median(v)) if v.size else np.nan,
                                      "p05": float(np.quantile(v, 0.05)) if v.size else np.nan,
                                      "p95": float(np.quantile(v, 0.95)) if v.size else np.nan})
            keep = rng.choice(len(draw_of), min(len(draw_of), 200), replace=False)
            sample.append(pd.DataFrame({f"{a}_{m}": v[keep] for (a, m), v in metrics.items()})
                          .assign(scenario=scenario.label, dose=regimen.label, dose_amount=regimen.amount))
    pta = pd.DataFrame(pta_rows)
    settings = {"doses": [r.label for r in regimens], "draws": int(n_draws), "patients": patients, "seed": seed,
                "efficacy_level": efficacy_level, "safety_level": safety_level,
                "targets": [t.__dict__ for t in usable], "scenarios": [s.label for s in scenarios],
                "schedule": f"{'the fitted data' if times is None else 'given'} sampling times "
                            f"({', '.join(f'{t:g}' for t in schedule[:8])}{', ...' if len(schedule) > 8 else ''} "
                            f"{cohort.time_unit} after the first dose) with residual error and censoring below the LLOQ"}
    settings["solver"] = [solver_note(virtual) for virtual, _ in members]
    if len(average.members) > 1:
        settings["model_average"] = average.describe()
    recommendation = recommend(pta, efficacy_level, safety_level)
    recommendation.update(skipped_targets=skipped, settings=settings,
                          run={"model": average.label, "data_hash": first.tree.attrs.get("data_hash")})
    return DoseSelection(pta, pd.DataFrame(exposure_rows), pd.concat(sample, ignore_index=True),
                         recommendation, settings)


def _exposure_summary(result: FitResult, analytes: list[str]) -> list[tuple[str, str]]:
    """(analyte, metric) pairs reported for every regimen: Cmax and the first partial AUC of each
    fitted analyte of cellular kinetics (transgene, CAR-T cells) or outside the CAR-T catalogue."""
    out = []
    for a in analytes:
        kind = result.cohort.analytes[a].kind if a in result.cohort.analytes else "other"
        if kind in ("ck", "other"):
            window = (CAR_T_WINDOWS if kind in CAR_T_KINDS else OTHER_WINDOWS)[0]
            out += [(a, "cmax"), (a, window_names([window], result.cohort.time_unit)[0][1])]
    return out


#: virtual patients carry residual error (SDs of 10-50%), so they are solved with looser
#: tolerances than a fit's log density (rtol 3e-5, atol 3e-8 of each state's peak) and their
#: records interpolated within the steps: on the demo fit's virtual patients 60.4 solver steps
#: per patient against the fit's 123.5 (79.8 with the steps landing on the 92 records),
#: predictions above the LLOQ within 0.74% of those at the fit's tolerances
VIRTUAL_RTOL = 1e-3
VIRTUAL_ATOL = 1e-6
#: the looser tolerance is used when the template subjects' predictions above the LLOQ stay
#: within this relative difference of those at the fit's own (checked for every fit)
VIRTUAL_DIFFERENCE = 0.01
#: template subjects in that check (a random sample of them when there are more)
CHECKED_SUBJECTS = 2000


def loose_steps(fitted: Tolerances) -> Tolerances:
    """The virtual patients' solver settings from a fit's: rtol VIRTUAL_RTOL and atol VIRTUAL_ATOL
    where looser, and the records interpolated within steps rather than landed on (`interpolate`)."""
    return replace(fitted, rtol=max(fitted.rtol, VIRTUAL_RTOL), atol=max(fitted.atol, VIRTUAL_ATOL), interpolate=True)


def virtual_steps(result: FitResult, design: Design, P: np.ndarray) -> tuple[Tolerances, float]:
    """(the solver settings for virtual patients, the largest relative difference found):
    `loose_steps` of the fit's when the predictions of `design` (parameter rows P) above the LLOQ
    stay within VIRTUAL_DIFFERENCE of those at the fit's tolerances, else the fit's."""
    fitted = result.spec.steps
    loose = loose_steps(fitted)
    if loose == fitted:
        return fitted, 0.0
    exact, quick = predictions(result, design, P, fitted), predictions(result, design, P, loose)
    lloq = np.array([result.cohort.lloq.get(a, 0.0) for a in design.analyte_names])[design.analyte]
    above = np.isfinite(exact) & (np.abs(exact) > lloq) & (exact != 0)
    difference = float(np.max(np.abs(quick[above] - exact[above]) / np.abs(exact[above]), initial=0.0))
    return (loose if difference <= VIRTUAL_DIFFERENCE else fitted), difference  # NaN: the fit's


def solver_note(virtual: "VirtualPatients") -> dict:
    """The tolerances the virtual patients were solved with, and what their check found."""
    steps = virtual.steps
    return {"model": virtual.result.model.name, "method": steps.method, "rtol": steps.rtol, "atol": steps.atol,
            "interpolate": steps.interpolate, "fit_rtol": virtual.result.spec.steps.rtol,
            "largest_relative_difference": virtual.steps_difference}


#: records simulated in one call (each array of them 8 bytes per record): regimens beyond it are
#: simulated in groups
RECORDS_PER_CALL = 20_000_000


@dataclass(frozen=True, eq=False)
class VirtualPatients:
    """One fit's virtual patients: every fitted subject (a donor of covariates and weight) under
    every candidate regimen in every scenario, as one template design built once (subjects
    scenario-major, then regimen, then donor); each `metrics` call selects new patients from it
    (`Design.subset`) instead of building cohorts in pandas again."""

    result: FitResult
    posterior: PosteriorDraws
    scenarios: tuple
    regimens: tuple
    analytes: tuple
    times: np.ndarray
    design: Design
    covariates: np.ndarray  # covariate rows of the template subjects (PosteriorDraws.covariates)
    steps: Tolerances       # the solver's (virtual_steps)
    steps_difference: float  # the largest relative difference virtual_steps found

    @classmethod
    def build(cls, result: FitResult, posterior: PosteriorDraws, scenarios: Sequence[Scenario],
              regimens: Sequence[Regimen], analytes: Sequence[str], times: np.ndarray) -> "VirtualPatients":
        cohort = result.cohort
        fitted = cohort.subjects
        weight = fitted["weight"].astype(float).fillna(70.0).to_numpy()
        ids = [[pd.Index([f"D{i + 1}R{j + 1}S{k + 1}" for i in range(len(fitted))], name="subject", dtype=object)
                for j in range(len(regimens))] for k in range(len(scenarios))]
        subjects = []
        for k, scenario in enumerate(scenarios):
            for j, regimen in enumerate(regimens):
                part = fitted.copy()
                part.index = ids[k][j]
                part["dose_level"] = pd.Series(regimen.label, index=part.index, dtype=object)
                if scenario.product is not None:
                    part["product"] = pd.Series(scenario.product, index=part.index, dtype=object)
                    part["lymphodepletion"] = pd.Series(scenario.lymphodepletion, index=part.index, dtype="boolean")
                subjects.append(part)
        doses = [regimen.dose_table(pd.Index(np.concatenate([ids[k][j] for k in range(len(scenarios))]),
                                             name="subject", dtype=object),
                                    np.tile(weight, len(scenarios)), cohort.time_unit)
                 for j, regimen in enumerate(regimens)]
        template = template_cohort(result.model, pd.concat(subjects), pd.concat(doses, ignore_index=True), times,
                                   analytes, source="dose selection", time_unit=cohort.time_unit)
        design = Design(result.model, template, analytes=analytes)
        covariates = posterior.covariates(template)
        # the check's own random stream: the user's seed draws the same patients whatever it finds
        check = np.random.default_rng(20261130)
        n = len(design.subjects)
        rows = np.sort(check.choice(n, min(n, CHECKED_SUBJECTS), replace=False))
        P = posterior.parameter_matrix(posterior.new_subjects(posterior.pick(len(rows), check), covariates[rows], check))
        steps, difference = virtual_steps(result, design.subset(rows), P)
        return cls(result, posterior, tuple(scenarios), tuple(regimens), tuple(analytes), np.asarray(times, float),
                   design, covariates, steps, difference)

    def metrics(self, scenario: int, picks: np.ndarray, patients: int, wanted, rng) -> list[dict]:
        """Per regimen, {(analyte, metric): values of the len(picks) x `patients` virtual
        patients (draw-major)}: new patients of posterior draws `picks` given each regimen in
        scenario number `scenario`, their covariates resampled from the fitted cohort, sampled at
        the times with residual error and LLOQ censoring, and the metrics `wanted` ((analyte,
        metric) pairs) computed by the NCA rules. The regimens are simulated together (one
        design, one call of the compiled solver), each with its own patients."""
        M = len(picks) * patients
        group = max(1, RECORDS_PER_CALL // max(1, M * len(self.times) * len(self.analytes)))
        R = len(self.regimens)
        # memory: at most RECORDS_PER_CALL records in one design
        return [metrics for first in range(0, R, group)
                for metrics in self._simulate(scenario, range(first, min(R, first + group)), picks, patients, wanted,
                                              rng)]

    def _simulate(self, scenario: int, regimens: range, picks, patients, wanted, rng) -> list[dict]:
        result, posterior, times, analytes = self.result, self.posterior, self.times, self.analytes
        cohort = result.cohort
        M, R, N = len(picks) * patients, len(regimens), len(cohort.subjects)
        # a virtual patient's design is its donor's under its regimen in the scenario
        donors = rng.integers(0, N, R * M)
        template_index = (scenario * len(self.regimens) + np.repeat(np.asarray(regimens), M)) * N + donors
        design = self.design.subset(template_index, [f"V{i + 1}" for i in range(R * M)])
        draw = np.tile(np.repeat(picks, patients), R)
        P = posterior.parameter_matrix(posterior.new_subjects(draw, self.covariates[template_index], rng))
        pred = predictions(result, design, P, self.steps)
        # each patient's residual SDs from its posterior draw
        sigma, additive = posterior.residual_of(draw)
        lloq = cohort.lloq
        T, A = len(times), len(analytes)
        # every patient's records are the template's: T times x A analytes, time-major
        layout = design.analyte[:T * A]
        if design.n_obs != R * M * T * A or not (layout.reshape(T, A) == layout[:A]).all() \
                or not (design.analyte.reshape(R * M, T * A) == layout).all():
            raise RuntimeError("virtual patients' records are not on the common schedule")  # a bug, not an input
        by_analyte = pred.reshape(R * M, T, A)
        out = [{} for _ in regimens]
        for analyte in analytes:
            f = by_analyte[:, :, int(np.flatnonzero(layout[:A] == design.analyte_names.index(analyte))[0])]
            obs = result.model.observations.get(analyte)
            if obs is None:  # an analyte without an error model is observed exactly
                v = f
            else:
                s = sigma[analyte][:, None] if analyte in sigma else obs.sigma
                a = additive[analyte][:, None] if analyte in additive else obs.additive
                v = with_residual_error(obs.error, f, s, a, rng.standard_normal(f.shape))
            limit = lloq.get(analyte, 0.0)
            cens = v < limit
            v = np.where(cens, limit, v)
            limits = np.full(T, limit)
            mine = [(a, m) for a, m in wanted if a == analyte]
            windows = window_names(sorted({window_of(m) for _, m in mine if window_of(m)}), cohort.time_unit)
            for kind in {metric_kind(m) for _, m in mine}:
                names = {m for _, m in mine if metric_kind(m) == kind}
                many = _metrics_of_all(kind, names, times, v, cens, limits, windows)
                for j, regimen in enumerate(self.regimens[r] for r in regimens):
                    mine_j = slice(j * M, (j + 1) * M)
                    if many is not None:   # all patients at once (pkpd.nca: exposure_many, aplasia_many, nadir_many)
                        out[j].update({(analyte, m): np.asarray(many[m], float)[mine_j] for m in names})
                        continue
                    k = time_factor(regimen.time_unit, cohort.time_unit) if regimen.time_unit else 1.0
                    interval = regimen.interval * k if regimen.count > 1 else None
                    dose_times = regimen.dose_times(cohort.time_unit)
                    per_patient = [profile_metrics(times, v[i], cens[i], limits, kind, windows, dose_times, interval)
                                   for i in range(j * M, (j + 1) * M)]
                    for m in names:
                        out[j][(analyte, m)] = np.array([float(r[m]) if r[m] is not None and r[m] is not pd.NA
                                                         else np.nan for r in per_patient])
        return out


def _metrics_of_all(kind: str, names: set, times, values, censored, limits, windows) -> dict | None:
    """The metrics `names` of every patient's profile (rows of values (M, T) at the common
    times) when they have a vectorised form, as profile_metrics computes them one by one; else
    None."""
    if kind == "exposure" and names <= {"cmax", "tmax", "tlast", "clast", "auc_last", *(n for _, n in windows)}:
        post = times >= 0
        return exposure_many(times[post], values[:, post], censored[:, post], windows)
    late, pre = times > 0, times < 0
    if kind == "aplasia":
        return aplasia_many(times[late], values[:, late], censored[:, late])
    if kind == "nadir":
        baseline = values[:, pre][:, -1] if pre.any() else np.full(len(values), np.nan)
        return nadir_many(times[late], values[:, late], censored[:, late], limits[late], baseline)
    return None


def recommend(pta: pd.DataFrame, efficacy_level: float, safety_level: float) -> dict:
    """Per scenario, the lowest dose meeting every level; overall, the lowest such dose across
    scenarios (ties: the higher smallest efficacy probability)."""
    out = {"efficacy_level": efficacy_level, "safety_level": safety_level, "scenarios": {}}
    best = None
    for scenario, group in pta.groupby("scenario", sort=False):
        chosen = None
        for dose, rows in sorted(group.groupby("dose", sort=False), key=lambda kv: kv[1]["dose_total"].iloc[0]):
            eff = rows[rows["kind"] == "efficacy"]
            safe = rows[rows["kind"] == "safety"]
            if (eff["probability"] >= efficacy_level).all() and (safe["probability"] >= safety_level).all() \
                    and len(eff):
                chosen = (dose, rows)
                break
        entry = {"recommended_dose": None, "reason": ""}
        if chosen is None:
            entry.update(_closest(group, efficacy_level, safety_level))
        else:
            dose, rows = chosen
            entry.update(recommended_dose=dose, dose_amount=float(rows["dose_amount"].iloc[0]),
                         dose_unit=str(rows["dose_unit"].iloc[0]),
                         probabilities={r["target"]: {"kind": r["kind"], "definition": r["definition"],
                                                      "probability": r["probability"], "lower": r["lower"],
                                                      "upper": r["upper"]} for _, r in rows.iterrows()})
            score = (float(rows["dose_total"].iloc[0]), -float(rows.loc[rows["kind"] == "efficacy", "probability"].min()))
            if best is None or score < best[0]:
                best = (score, scenario, entry)
        out["scenarios"][scenario] = entry
    out["recommended"] = None if best is None else {"scenario": best[1], **best[2]}
    if best is None and out["scenarios"]:
        scenario, entry = min(out["scenarios"].items(), key=lambda kv: max(kv[1]["closest_shortfall"].values()))
        out["closest"] = {"scenario": scenario, "dose": entry["closest_dose"],
                          "shortfall": entry["closest_shortfall"], "binding_targets": entry["binding_targets"]}
    return out


def _closest(group: pd.DataFrame, efficacy_level: float, safety_level: float) -> dict:
    """When no dose of a scenario meets every level: the targets that bind (short at every dose)
    and the dose closest to meeting them all (the smallest largest shortfall; ties: the lower
    dose), labelled as not meeting them."""
    level = np.where(group["kind"] == "efficacy", efficacy_level, safety_level)
    rows = group.assign(level=level, shortfall=np.maximum(level - group["probability"], 0.0))
    worst = rows.groupby("dose", sort=False).agg(worst=("shortfall", "max"), total=("dose_total", "first"))
    dose = worst.sort_values(["worst", "total"]).index[0]
    at = rows[rows["dose"] == dose]
    binding = [t for t, g in rows.groupby("target", sort=False) if (g["shortfall"] > 0).all()]
    best_of = {t: rows[rows["target"] == t].sort_values("probability").iloc[-1] for t in binding}
    binds = "; ".join(f"P({t}) reaches at most {r['probability']:.2f} (at {r['dose']}) against {r['level']:g}"
                      for t, r in best_of.items())
    short = ", ".join(f"P({r['target']}) {r['probability']:.2f} vs {r['level']:g}" for _, r in at.iterrows()
                      if r["shortfall"] > 0)
    reason = (f"no candidate dose reaches P(efficacy) >= {efficacy_level} with P(safety) >= {safety_level}: "
              f"{binds or 'no single target fails at every dose; the levels are not met together'}. "
              f"Closest to the levels, not meeting them: {dose} ({short}). Lower the binding level if the "
              "literature supports it, or widen the dose range")
    return {"reason": reason, "binding_targets": binding, "closest_dose": dose,
            "closest_shortfall": {r["target"]: float(r["shortfall"]) for _, r in at.iterrows()}}
