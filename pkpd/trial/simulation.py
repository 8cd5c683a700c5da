"""The model-based trial simulator: a dose-escalation design run on virtual patients drawn from a
fitted PK/PD model, each assessed for DLT within the window by a toxicity model.

Per scenario (product x lymphodepletion) and dose, a pool of virtual patients is simulated once,
vectorised through the compiled solver (pkpd.dose.selection.VirtualPatients: posterior draws x
new random effects, covariates resampled from the fitted cohort, the trial's sampling schedule,
residual error, LLOQ censoring). Each simulated trial takes one posterior draw (its "true"
population) and one draw of the toxicity parameters, so the operating characteristics carry
parameter uncertainty as well as between-patient variability; its patients at a dose are that
draw's pool patients in turn. DLTs are drawn for every (trial, dose, patient) at once; only the
design's decisions run trial by trial (they are sequential by nature; optionally on a dask
client, in chunks).

Timing: patients arrive at `accrual_per_month`; a cohort starts at the previous decision, the
first patient of a new dose is observed for `stagger` days before the others are infused, and a
decision is taken when the cohort's last patient has completed the `window`. After escalation an
expansion cohort of `expansion` patients is treated at the selected dose.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .selection import STOP
from .runs import DAYS_PER_MONTH, run_cohorts, run_time_to_event
from .toxicity import ToxicityModel



@dataclass(frozen=True)
class TrialSimulation:
    oc: pd.DataFrame        # per scenario and dose (and "none"): selection, patients, DLTs, model P(DLT), outcomes
    summary: pd.DataFrame   # per scenario: stopping, sample size, duration, outcomes at the selected dose
    settings: dict = field(default_factory=dict)

    def describe(self) -> str:
        lines = []
        for _, row in self.summary.iterrows():
            best = self.oc[(self.oc["scenario"] == row["scenario"]) & (self.oc["dose"] != "none")]
            top = best.loc[best["p_select"].idxmax()]
            lines.append(f"{row['scenario']}: {row['design']} selects {top['dose']} with probability "
                         f"{top['p_select']:.2f} (SE {top['se_select']:.3f}); P(stop early) {row['p_stop_early']:.3f}; "
                         f"{row['mean_n']:.1f} patients, {row['mean_duration_d']:.0f} days")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Pool:
    """Virtual patients of one scenario: values (D doses, S draws, P patients) per metric."""
    signal: np.ndarray
    outcomes: dict


def simulate_trials(result, design, doses, *, toxicity: ToxicityModel | None = None, scenarios=None,
                    trials: int = 1000, seed: int = 0, window: float = 28.0, stagger: float = 14.0,
                    accrual_per_month: float = 2.0, expansion: int = 9, draws: int = 100,
                    patients: int | None = None, times=None, client=None, events=None) -> TrialSimulation:
    """Operating characteristics of `design` (pkpd.trial designs) on `doses` (regimens, lowest
    first) for virtual patients of the fit `result` (a FitResult or a ModelAverage), by scenario
    (default: those the model distinguishes, pkpd.dose.scenarios_for).

    The toxicity model's grade parameters are fitted first (pkpd.trial.toxicity_fit) when the
    cohort `events` (default: the fitted cohort) carries graded records of its event and the
    model was not fitted already; otherwise they stay at their priors, and the settings say so."""
    from ..dose import DEFAULT_TARGETS, scenarios_for
    from ..dose.selection import VirtualPatients, data_schedule, solver_note
    from ..predict.average import ModelAverage
    from ..predict.posterior import PosteriorDraws
    from ..simulate.regimen import parse_regimen

    toxicity = toxicity or ToxicityModel()
    _check(design, doses, trials, window, stagger, accrual_per_month, expansion, draws)
    average = ModelAverage.of(result)
    first = average.members[0]
    if toxicity.analyte not in first.analytes:
        raise ValueError(f"the toxicity signal {toxicity.analyte} {toxicity.metric} is not among the fitted analytes "
                         f"({', '.join(first.analytes)}): fit it, or link the toxicity to another signal "
                         "(ToxicityModel(analyte=..., metric=...), --signal ANALYTE:METRIC)")
    cohort = first.cohort
    toxicity = replace(toxicity, unit=_signal_unit(toxicity, cohort))
    toxicity, toxicity_note = _fitted(toxicity, events if events is not None else cohort, seed)
    unit = str(cohort.doses["absolute_unit"].mode().iloc[0])
    regimens = [parse_regimen(d, unit) for d in doses]
    weight = float(cohort.subjects["weight"].astype(float).fillna(70.0).median())
    totals = [r.total() * (weight if r.unit.endswith("/kg") else 1.0) for r in regimens]
    if any(np.diff(totals) <= 0):
        raise ValueError(f"doses must be given lowest first, each higher than the one before: {list(doses)}")
    per_dose = 6 if design.max_n >= 10**9 else int(design.max_n)
    patients = int(patients or max(24, per_dose + expansion))
    if patients < per_dose + expansion:
        raise ValueError(f"patients must be at least {per_dose + expansion} (the most one dose can receive in a trial, "
                         f"escalation and expansion), got {patients}")
    # what the selected dose is expected to deliver: the default efficacy targets and the IgG nadir
    outcomes = [t for t in DEFAULT_TARGETS if t.analyte in first.analytes and (t.kind == "efficacy" or t.metric == "nadir")]
    wanted = {toxicity.signal} | {(t.analyte, t.metric) for t in outcomes}
    analytes = sorted({a for a, _ in wanted})
    schedule = np.asarray(times if times is not None else data_schedule(first), float)
    scenarios = list(scenarios) if scenarios else list(dict.fromkeys(s for m in average.members for s in scenarios_for(m)))
    rng = np.random.default_rng(seed)
    members = [(VirtualPatients.build(m, PosteriorDraws.from_result(m), scenarios, regimens, analytes, schedule), n)
               for m, n in zip(average.members, average.allocate(draws)) if n]
    oc_rows, summary_rows = [], []
    for k, scenario in enumerate(scenarios):
        pool = _pool(members, len(regimens), k, wanted, patients, toxicity, outcomes, rng)
        outcome = _trials(design, pool, toxicity, outcomes, trials, window, stagger, accrual_per_month, expansion,
                          rng, client)
        labels = [r.label for r in regimens]
        oc_rows += _oc_rows(design, scenario.label, labels, outcome, outcomes)
        summary_rows.append(_summary_row(design, scenario.label, labels, outcome, outcomes, trials))
    settings = {"design": repr(design), "doses": [r.label for r in regimens], "trials": int(trials), "seed": seed,
                "window_d": window, "stagger_d": stagger, "accrual_per_month": accrual_per_month,
                "expansion": expansion, "draws": int(sum(n for *_, n in members)), "patients_per_draw": patients,
                "toxicity": toxicity.describe() + toxicity_note, "toxicity_fitted": toxicity.fitted,
                "outcomes": [t.label for t in outcomes], "scenarios": [s.label for s in scenarios],
                "model": average.label, "solver": [solver_note(virtual) for virtual, _ in members]}
    return TrialSimulation(pd.DataFrame(oc_rows), pd.DataFrame(summary_rows), settings)


def _signal_unit(toxicity: ToxicityModel, cohort) -> str:
    """The unit of the toxicity signal as the data give it (its reference is read in it)."""
    unit = cohort.analytes[toxicity.analyte].unit
    return f"{unit}*{cohort.time_unit}" if toxicity.metric.startswith("auc") else unit


def _fitted(toxicity: ToxicityModel, events, seed: int) -> tuple[ToxicityModel, str]:
    """The toxicity model fitted to the adverse-event records of `events` when it has enough
    of them (and a note when it has too few)."""
    from .toxicity_fit import MIN_SUBJECTS, fit_toxicity, toxicity_data

    if toxicity.fitted:
        return toxicity, ""
    data, _ = toxicity_data(toxicity, events)
    if len(data) == 0:
        return toxicity, ""
    if len(data) < MIN_SUBJECTS:
        return toxicity, (f" Only {len(data)} subject(s) have graded {toxicity.records} records (at least "
                          f"{MIN_SUBJECTS} are needed to fit): the priors are used.")
    return fit_toxicity(toxicity, events, seed=seed), ""


def _check(design, doses, trials, window, stagger, accrual, expansion, draws) -> None:
    for attribute in ("decide", "select", "cohort_size", "max_n", "name"):
        if not hasattr(design, attribute):
            raise TypeError(f"design must be a pkpd.trial design (BOIN, MTPI2, CRM, ThreePlusThree); "
                            f"{type(design).__name__} has no {attribute!r}")
    if len(list(doses)) < 2:
        raise ValueError("doses: give at least two dose levels, lowest first")
    checks = (("trials", trials, trials >= 2 and int(trials) == trials), ("window", window, window > 0),
              ("stagger", stagger, stagger >= 0), ("accrual_per_month", accrual, accrual > 0),
              ("expansion", expansion, expansion >= 0 and int(expansion) == expansion),
              ("draws", draws, draws >= 10))
    for name, value, ok in checks:
        if not ok:
            raise ValueError(f"{name} = {value!r} is not allowed (trials >= 2, window > 0 days, stagger >= 0 days, "
                             "accrual_per_month > 0, expansion a whole number >= 0, draws >= 10)")


def _pool(members, n_regimens, scenario, wanted, patients, toxicity, outcomes, rng):
    """Virtual patients of every dose for scenario number `scenario`: the signal (D, S, P) and
    each outcome metric's values (D, S, P), S the posterior draws (pooled across the members of
    an average: (VirtualPatients, draws) pairs)."""
    parts = [virtual.metrics(scenario, virtual.posterior.pick(n, rng), patients, wanted, rng) for virtual, n in members]
    per_dose = [{key: np.concatenate([p[j][key] for p in parts]).reshape(-1, patients) for key in wanted}
                for j in range(n_regimens)]
    signal = np.stack([d[toxicity.signal] for d in per_dose])
    values = {t.name: np.stack([d[(t.analyte, t.metric)] for d in per_dose]) for t in outcomes}
    return _Pool(signal, values)


def _trials(design, pool, toxicity, outcomes, trials, window, stagger, accrual, expansion, rng, client) -> dict:
    D, S, P = pool.signal.shape
    draw = rng.integers(0, S, trials)
    parameters = toxicity.draw(trials, rng)
    signal = pool.signal[:, draw, :].transpose(1, 0, 2)                     # (T, D, P)
    p_dlt = toxicity.dlt_probability(signal, parameters)                    # (T, D, P)
    dlt = rng.random(p_dlt.shape) < p_dlt
    onset = rng.uniform(*toxicity.onset_days, p_dlt.shape)
    gaps = rng.exponential(DAYS_PER_MONTH / accrual, (trials, D * P + expansion))
    arguments = [(design, dlt[c], onset[c], gaps[c], window, stagger, expansion)
                 for c in np.array_split(np.arange(trials), 8) if len(c)]
    if client is not None:
        parts = client.gather(client.map(_run_chunk, *zip(*arguments)))
    else:
        parts = [_run_chunk(*a) for a in arguments]
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    out["p_dlt"] = p_dlt.mean(2)                                           # (T, D): the model's DLT probability
    # each target's attainment (T, D) and median value among the trial's population at each dose
    out["attained"] = {t.name: t.attained(pool.outcomes[t.name][:, draw, :]).mean(2).T for t in outcomes}
    out["median"] = {t.name: np.nanmedian(pool.outcomes[t.name][:, draw, :], axis=2).T for t in outcomes}
    return out


def _run_chunk(design, dlt, onset, gaps, window, stagger, expansion) -> dict:
    """The design's decisions for a chunk of trials with DLT outcomes dlt (T, D, P) and their
    onsets (days) drawn in advance (patient j at dose d of trial t is dlt[t, d, j]) and
    inter-arrival gaps (T, ...)."""
    T, D, _ = dlt.shape
    n = np.zeros((T, D), np.int64)
    y = np.zeros((T, D), np.int64)
    selected = np.full(T, STOP)
    stopped = np.zeros(T, bool)
    duration = np.zeros(T)
    expansion_dlt = np.full(T, np.nan)
    for t in range(T):
        if getattr(design, "tite", False):
            n[t], y[t], selected[t], stopped[t], clock = run_time_to_event(
                design, D, lambda d, j: (dlt[t, d, j], onset[t, d, j]), gaps[t], window)
            arrival = int(n[t].sum())
        else:
            timing = _Clock(gaps[t], window, stagger)
            n[t], y[t], selected[t], stopped[t] = run_cohorts(
                design, D, lambda d, first, size: int(dlt[t, d, first:first + size].sum()), on_cohort=timing.cohort)
            clock, arrival = timing.clock, timing.arrival
        _expand(t, selected, dlt, n, gaps, arrival, expansion, expansion_dlt, duration, clock, window)
    return {"n": n, "y": y, "selected": selected, "stopped": stopped, "duration": duration,
            "expansion_dlt": expansion_dlt}


class _Clock:
    """The calendar of a cohort trial: patients arrive with the given gaps once the previous
    decision is taken; the first patient of a new dose is observed `stagger` days alone; the
    decision comes when the cohort's last patient has completed the window."""

    def __init__(self, gaps: np.ndarray, window: float, stagger: float):
        self.gaps, self.window, self.stagger = gaps, window, stagger
        self.clock, self.arrival = 0.0, 0

    def cohort(self, dose: int, new_dose: bool, size: int) -> None:
        starts = self.clock + np.cumsum(self.gaps[self.arrival:self.arrival + size])
        self.arrival += size
        if new_dose and size > 1:
            starts[1:] = np.maximum(starts[1:], starts[0] + self.stagger)
        self.clock = starts[-1] + self.window


def _expand(t, selected, dlt, n, gaps, arrival, expansion, expansion_dlt, duration, clock, window) -> None:
    """The expansion cohort of trial t at its selected dose, enrolled once escalation has ended
    (at `clock`, every window complete): its DLT rate, and the trial's end."""
    d = selected[t]
    if d != STOP and expansion:
        expansion_dlt[t] = dlt[t, d, n[t, d]:n[t, d] + expansion].mean()
        clock += gaps[t, arrival:arrival + expansion].sum() + window
    duration[t] = clock


def _se(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def _oc_rows(design, scenario, labels, outcome, outcomes) -> list[dict]:
    T = len(outcome["selected"])
    rows = []
    for d, label in enumerate(labels + ["none"]):
        chosen = outcome["selected"] == (d if label != "none" else STOP)
        p = chosen.mean()
        row = {"design": design.name, "scenario": scenario, "dose_level": d + 1 if label != "none" else None,
               "dose": label, "p_select": p, "se_select": np.sqrt(p * (1 - p) / T)}
        if label != "none":
            for t in outcomes:
                row[f"p_{t.name}"] = outcome["attained"][t.name][:, d].mean()
            model = outcome["p_dlt"][:, d]
            row.update(mean_n=outcome["n"][:, d].mean(), se_n=_se(outcome["n"][:, d].astype(float)),
                       mean_dlt=outcome["y"][:, d].mean(), se_dlt=_se(outcome["y"][:, d].astype(float)),
                       p_dlt_model=model.mean(), p_dlt_lower=np.quantile(model, 0.05),
                       p_dlt_upper=np.quantile(model, 0.95))
        rows.append(row)
    return rows


def _summary_row(design, scenario, labels, outcome, outcomes, trials) -> dict:
    total = outcome["n"].sum(1).astype(float)
    selected = outcome["selected"]
    picked = selected != STOP
    row = {"design": design.name, "scenario": scenario, "trials": trials,
           "p_stop_early": outcome["stopped"].mean(), "p_no_dose": 1 - picked.mean(),
           "mean_n": total.mean(), "se_n": _se(total), "mean_dlt": outcome["y"].sum(1).mean(),
           "mean_duration_d": outcome["duration"].mean(), "se_duration_d": _se(outcome["duration"]),
           "expansion_dlt_rate": float(np.nanmean(outcome["expansion_dlt"]))
           if np.isfinite(outcome["expansion_dlt"]).any() else float("nan")}
    rows = np.flatnonzero(picked)
    for t in outcomes:   # what the selected dose is expected to deliver, in the trials that selected one
        attained = outcome["attained"][t.name][rows, selected[rows]]
        median = outcome["median"][t.name][rows, selected[rows]]
        row[f"selected_p_{t.name}"] = attained.mean() if len(rows) else np.nan
        row[f"se_selected_p_{t.name}"] = _se(attained)
        row[f"selected_median_{t.analyte}_{t.metric}"] = np.nanmedian(median) if len(rows) else np.nan
    return row
