"""A cohort's doses, resets and covariate changes as events for the solvers.

Times here are the model's: in its time unit, and relative to each subject's first dose
(t = 0 there). A dose follows NONMEM's meaning: CMT names the state it adds to (a number
counts the model's states from 1; blank: the model's default target), RATE or DUR make it a
zero-order infusion, SS=1 puts the subject at the steady state of the regimen (dose every II)
before it, EVID 4 resets the states first, EVID 3 resets them without a dose. The
bioavailability F and the lag time are model expressions evaluated by the solvers.

A model that declares no dosing targets takes one dose at t = 0 through c.dose (the CAR-T
closed forms): any further dose, infusion or reset is an error naming the subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.cohort import Cohort
from ..models import Model, ModelError
from ..units import UnitError, conversion_factor

BOLUS, INFUSION_DURATION, INFUSION_RATE, RESET, STEADY_STATE = 0, 1, 2, 3, 4
KIND_NAMES = {BOLUS: "bolus", INFUSION_DURATION: "infusion (duration)", INFUSION_RATE: "infusion (rate)",
              RESET: "reset", STEADY_STATE: "steady state"}


@dataclass(frozen=True)
class Schedule:
    """Events of N subjects as flat arrays, each subject's in start[i]:start[i+1], by time.

    kind: BOLUS, INFUSION_DURATION (amount over `length`), INFUSION_RATE (at `length` amount
    per time unit), RESET, or STEADY_STATE: at the recorded time of an SS=1 dose, the states are
    reset and brought to the steady state of that dose (the next event) given every `ss` time
    units, lag included; then the dose itself follows. target: index into model.dosing; amount:
    in the target's unit.
    Covariates: values (S, n_covariates) of segments seg_start[i]:seg_start[i+1] of subject i,
    each starting at seg_time (the first at -inf); the segment in force at t = 0 gives the
    initial states.
    offset: each subject's first dose time in the cohort's own time (records are shifted by it).
    """

    start: np.ndarray
    time: np.ndarray
    kind: np.ndarray
    target: np.ndarray
    amount: np.ndarray
    length: np.ndarray
    ss: np.ndarray
    seg_start: np.ndarray
    seg_time: np.ndarray
    covariates: np.ndarray
    offset: np.ndarray

    @property
    def n_subjects(self) -> int:
        return len(self.start) - 1

    def events_of(self, i: int) -> pd.DataFrame:
        """Subject i's events as a readable table (for messages and tests)."""
        sl = slice(self.start[i], self.start[i + 1])
        return pd.DataFrame({"time": self.time[sl], "kind": [KIND_NAMES[k] for k in self.kind[sl]],
                             "target": self.target[sl], "amount": self.amount[sl], "length": self.length[sl],
                             "ss": self.ss[sl]})

    def covariates_at(self, subject_index: np.ndarray, times: np.ndarray) -> np.ndarray:
        """(n, n_covariates) covariates of each (subject, model time) pair: the segment in force."""
        out = np.empty((len(times), self.covariates.shape[1]))
        for k, (i, t) in enumerate(zip(subject_index, times)):
            lo, hi = self.seg_start[i], self.seg_start[i + 1]
            seg = lo + int(np.searchsorted(self.seg_time[lo:hi], t, side="right")) - 1
            out[k] = self.covariates[max(seg, lo)]
        return out


def model_cohort(model: Model, cohort: Cohort) -> Cohort:
    """The cohort in the model's time unit (a copy when they differ)."""
    return cohort.in_time_unit(model.time_unit)


def schedule(model: Model, cohort: Cohort) -> Schedule:
    """The events of every subject of `cohort` (already in the model's time unit) for `model`."""
    if cohort.time_unit != model.time_unit:
        raise ValueError(f"the cohort is in {cohort.time_unit}, model {model.name} in {model.time_unit}: "
                         "convert it with cohort.in_time_unit(model.time_unit)")
    subjects = cohort.subject_ids
    doses = cohort.dose_records()
    by_subject = {s: g for s, g in doses.groupby("subject", sort=False)}
    missing = [s for s in subjects if s not in by_subject]
    if missing:
        raise ValueError(f"subject(s) {', '.join(missing[:5])} have no dose; model {model.name} needs one to "
                         "start from (t = 0 is each subject's first dose)")
    offset = np.array([float(by_subject[s]["time"].min()) for s in subjects])
    resets = cohort.events[cohort.events["evid"] == 3] if len(cohort.events) else cohort.events
    reset_times = {s: g["time"].to_numpy(float) for s, g in resets.groupby("subject", sort=False)}
    first_amount = np.empty(len(subjects))
    rows: list[tuple] = []
    start = [0]
    for i, s in enumerate(subjects):
        mine = by_subject[s].sort_values("time", kind="stable")
        first_amount[i] = _amount(model, model.dose_unit, mine.iloc[0], s)
        if model.dosing:
            units = _dose_events(model, mine, s, offset[i])
            units += [[(t - offset[i], RESET, 0, 0.0, 0.0, 0.0)] for t in reset_times.get(s, ())]
            # by time; a reset before a dose at the same time; a steady state just before its dose
            units.sort(key=lambda u: (u[0][0], u[0][1] != RESET))
            rows += [event for unit in units for event in unit]
        else:
            _single_dose_only(model, mine, s, reset_times.get(s, ()))
        start.append(len(rows))
    arrays = np.array(rows, float).reshape(-1, 6) if rows else np.empty((0, 6))
    seg_start, seg_time, values = _covariate_segments(model, cohort, first_amount, offset)
    return Schedule(np.array(start, np.int64), np.ascontiguousarray(arrays[:, 0]),
                    arrays[:, 1].astype(np.int64), arrays[:, 2].astype(np.int64),
                    np.ascontiguousarray(arrays[:, 3]), np.ascontiguousarray(arrays[:, 4]),
                    np.ascontiguousarray(arrays[:, 5]), seg_start, seg_time, values, offset)


def _amount(model: Model, unit: str, dose, subject) -> float:
    """The dose's absolute amount in `unit` (pint), or a ModelError naming the dose."""
    try:
        return float(dose["absolute"]) * conversion_factor(str(dose["absolute_unit"]), unit)
    except UnitError:
        raise ModelError(f"subject {subject}: the dose at time {dose['time']:g} is in {dose['unit']}, which cannot "
                         f"be converted to {unit}, the dose unit of model {model.name}; give the amount in "
                         f"{unit} (or a unit of the same kind)") from None


def _target(model: Model, cmt, subject, time) -> int:
    """Index into model.dosing of the state named by a dose's CMT ('' -> the default)."""
    text = str(cmt).strip()
    if text in ("", "nan", "<NA>", "."):
        return 0
    states = model.states
    if text.replace(".0", "").isdigit():
        k = int(float(text))
        if not 1 <= k <= len(states):
            raise ModelError(f"subject {subject}: the dose at time {time:g} goes to CMT {k}, but model "
                             f"{model.name} has {len(states)} states ({', '.join(states)}; CMT counts them from 1)")
        name = states[k - 1]
    else:
        name = text
    targets = [d.target for d in model.dosing]
    if name not in targets:
        raise ModelError(f"subject {subject}: the dose at time {time:g} goes to {text!r} (state {name}), which is "
                         f"not a dosing target of model {model.name}; its targets are "
                         + ", ".join(f"{t} (CMT {states.index(t) + 1})" for t in targets))
    return targets.index(name)


def _dose_events(model: Model, doses: pd.DataFrame, subject, offset: float) -> list[list[tuple]]:
    """Each dose as a list of events: [reset (EVID 4)], [steady state (SS=1)], the dose."""
    units = []
    for _, dose in doses.iterrows():
        k = _target(model, dose["cmt"], subject, dose["time"])
        unit = model.dosing[k].unit
        amount = _amount(model, unit, dose, subject)
        t = float(dose["time"]) - offset
        unit = [(t, RESET, 0, 0.0, 0.0, 0.0)] if int(dose["evid"]) == 4 else []
        rate, duration = float(dose["rate"]), float(dose["duration"])
        if rate > 0:
            # RATE is in the dose's unit per time: the same factor as the amount
            kind, length = INFUSION_RATE, rate * amount / float(dose["amount"])
        elif duration > 0:
            kind, length = INFUSION_DURATION, duration
        else:
            kind, length = BOLUS, 0.0
        if int(dose["ss"]) == 1:
            interval = float(dose["ii"])
            if kind == INFUSION_DURATION and length >= interval:
                raise ModelError(f"subject {subject}: the steady-state infusion at time {dose['time']:g} lasts "
                                 f"{length:g}, not shorter than its interval II {interval:g}")
            unit.append((t, STEADY_STATE, k, amount, length, interval))
        unit.append((t, kind, k, amount, length, 0.0))
        units.append(unit)
    return units


def _single_dose_only(model: Model, doses: pd.DataFrame, subject, resets) -> None:
    dose = doses.iloc[0]
    problem = None
    if len(doses) > 1:
        problem = f"{len(doses)} doses (times {', '.join(f'{t:g}' for t in doses['time'].iloc[:4])})"
    elif float(dose["rate"]) > 0 or float(dose["duration"]) > 0:
        problem = "an infusion (RATE or DUR)"
    elif int(dose["ss"]) == 1:
        problem = "a steady-state dose (SS=1)"
    elif len(resets) or int(dose["evid"]) == 4:
        problem = "a reset (EVID 3 or 4)"
    if problem:
        raise ModelError(f"subject {subject} has {problem}, but model {model.name} takes a single dose at t = 0 "
                         "(through c.dose, in closed form): use a model whose ODE declares dosing targets "
                         "(e.g. antigen_driven for CAR-T re-infusion or split doses), or its ODE form")


def _covariate_segments(model: Model, cohort: Cohort, first_amount: np.ndarray, offset: np.ndarray):
    """Step functions of every covariate the model sees, carried forward from EVID 2 rows."""
    subjects = cohort.subjects
    names = model.covariate_names
    product = subjects["product"].astype(object).fillna("").astype(str).str.upper()
    baseline = {
        "dose": first_amount,
        "ld": subjects["lymphodepletion"].astype("boolean").fillna(False).astype(bool).to_numpy(float),
        "bcma": product.str.contains("BCMA").to_numpy(float),
        "cd20": product.str.contains("CD20").to_numpy(float),
        # unknown weight: 70 kg (only per-kg doses and weight-based models need it; the reader
        # refuses per-kg doses without a weight, and a model declaring weight is checked below)
        "weight": subjects["weight"].astype(float).fillna(70.0).to_numpy(),
    }
    events = cohort.events
    varying: dict[str, str] = {}  # covariate -> events column
    for name in names[len(baseline):]:
        column = _column(subjects.columns, name) or _column(events.columns, name)
        if column is None:
            available = [c for c in subjects.columns if pd.api.types.is_numeric_dtype(subjects[c])]
            raise ModelError(f"model {model.name} reads covariate {name!r}, which is not a column of the data "
                             f"(numeric columns: {', '.join(available) or 'none'}); add it, or rename the column")
        values = pd.to_numeric(subjects[column], errors="coerce") if column in subjects.columns else \
            pd.Series(np.nan, index=subjects.index)
        baseline[name] = values.to_numpy(float)
        if _column(events.columns, name):
            varying[name] = _column(events.columns, name)
    if "weight" in events.columns and events["weight"].notna().any():
        varying["weight"] = "weight"
    seg_start, seg_time, rows = [0], [], []
    for i, s in enumerate(cohort.subject_ids):
        current = np.array([baseline[n][i] for n in names])
        changes = events[(events["subject"] == s)] if varying else events.iloc[:0]
        seg_time.append(-np.inf)
        pending = []
        for _, row in changes.sort_values("time", kind="stable").iterrows():
            update = {n: float(row[c]) for n, c in varying.items() if pd.notna(row[c])}
            if update:
                pending.append((float(row["time"]) - offset[i], update))
        # a covariate missing at baseline takes its first recorded value (NONMEM's carry-back)
        for k, n in enumerate(names):
            if np.isnan(current[k]):
                first = next((u[n] for _, u in pending if n in u), None)
                if first is None:
                    raise ModelError(f"subject {s} has no value of covariate {n!r}, which model {model.name} reads")
                current[k] = first
        rows.append(current.copy())
        for t, update in pending:
            for n, v in update.items():
                current[names.index(n)] = v
            if t <= seg_time[-1]:
                rows[-1] = current.copy()
            else:
                seg_time.append(t)
                rows.append(current.copy())
        seg_start.append(len(rows))
    return (np.array(seg_start, np.int64), np.array(seg_time, float),
            np.ascontiguousarray(np.array(rows, float).reshape(len(rows), len(names))))


def _column(columns, name: str) -> str | None:
    for c in columns:
        if str(c).lower() == name.lower():
            return c
    return None
