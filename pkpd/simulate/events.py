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
    """The events of every subject of `cohort` (already in the model's time unit) for `model`.
    Vectorised over dose records (dose selection builds schedules of many thousand patients)."""
    if cohort.time_unit != model.time_unit:
        raise ValueError(f"the cohort is in {cohort.time_unit}, model {model.name} in {model.time_unit}: "
                         "convert it with cohort.in_time_unit(model.time_unit)")
    subjects = cohort.subject_ids
    N = len(subjects)
    doses = cohort.dose_records()
    who = pd.Index(subjects).get_indexer(doses["subject"])
    missing = sorted(set(range(N)) - set(who))
    if missing:
        raise ValueError(f"subject(s) {', '.join(subjects[i] for i in missing[:5])} have no dose; model "
                         f"{model.name} needs one to start from (t = 0 is each subject's first dose)")
    time = doses["time"].to_numpy(float)
    offset = np.full(N, np.inf)
    np.minimum.at(offset, who, time)
    first = np.lexsort((time, who))  # the first dose of each subject: the first row of its block
    first = first[np.r_[True, np.diff(who[first]) != 0]]
    first_amount = np.empty(N)
    first_amount[who[first]] = _amounts(model, doses.iloc[first], [model.dose_unit] * len(first))
    resets = cohort.events[cohort.events["evid"] == 3] if len(cohort.events) else cohort.events
    if not model.dosing:
        _single_dose_only(model, doses, who, resets)
        arrays = np.empty((0, 7))
    else:
        arrays = _dose_events(model, doses, who, offset, resets, pd.Index(subjects))
    start = np.searchsorted(arrays[:, 0], np.arange(N + 1)).astype(np.int64) if len(arrays) else np.zeros(N + 1, np.int64)
    seg_start, seg_time, values = _covariate_segments(model, cohort, first_amount, offset)
    return Schedule(start, np.ascontiguousarray(arrays[:, 1]), arrays[:, 2].astype(np.int64),
                    arrays[:, 3].astype(np.int64), np.ascontiguousarray(arrays[:, 4]),
                    np.ascontiguousarray(arrays[:, 5]), np.ascontiguousarray(arrays[:, 6]), seg_start, seg_time,
                    values, offset)


def _amounts(model: Model, doses: pd.DataFrame, units) -> np.ndarray:
    """Each dose's absolute amount in the unit given for it (pint), or a ModelError naming a dose
    whose unit cannot be converted."""
    absolute = doses["absolute"].to_numpy(float)
    out = np.empty(len(doses))
    source = doses["absolute_unit"].astype(str).to_numpy()
    units = np.asarray(units, dtype=object)
    for src, dst in set(zip(source, units)):
        rows = (source == src) & (units == dst)
        try:
            out[rows] = absolute[rows] * conversion_factor(src, dst)
        except UnitError:
            dose = doses.iloc[int(np.flatnonzero(rows)[0])]
            raise ModelError(f"subject {dose['subject']}: the dose at time {dose['time']:g} is in {dose['unit']}, "
                             f"which cannot be converted to {dst}, the dose unit of model {model.name}; give the "
                             f"amount in {dst} (or a unit of the same kind)") from None
    return out


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


def _dose_events(model: Model, doses: pd.DataFrame, who: np.ndarray, offset: np.ndarray, resets: pd.DataFrame,
                 index: pd.Index) -> np.ndarray:
    """Rows (subject, time, kind, target, amount, length, ss) sorted by subject and time: per dose
    [a reset (EVID 4)], [a steady state (SS=1)], the dose; and the EVID 3 resets (before any
    dose at the same time)."""
    cmt = doses["cmt"].astype(str).to_numpy()
    time = doses["time"].to_numpy(float)
    targets = np.empty(len(doses), np.int64)
    for text in set(cmt):
        rows = cmt == text
        i = int(np.flatnonzero(rows)[0])
        targets[rows] = _target(model, text, doses["subject"].iloc[i], time[i])
    amount = _amounts(model, doses, [model.dosing[k].unit for k in targets])
    rate, duration = doses["rate"].to_numpy(float), doses["duration"].to_numpy(float)
    # RATE is in the dose's unit per time: the same factor as the amount
    with np.errstate(invalid="ignore", divide="ignore"):
        per_rate = rate * amount / doses["amount"].to_numpy(float)
    kind = np.where(rate > 0, INFUSION_RATE, np.where(duration > 0, INFUSION_DURATION, BOLUS))
    length = np.where(rate > 0, per_rate, np.where(duration > 0, duration, 0.0))
    t = time - offset[who]
    ss = doses["ss"].to_numpy(int) == 1
    interval = doses["ii"].to_numpy(float)
    bad = ss & (kind == INFUSION_DURATION) & (length >= interval)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ModelError(f"subject {doses['subject'].iloc[i]}: the steady-state infusion at time {time[i]:g} lasts "
                         f"{length[i]:g}, not shorter than its interval II {interval[i]:g}")
    order = np.arange(len(doses))
    zeros = np.zeros(len(doses))
    # columns: subject, time, group (the dose's row; -1 for EVID 3), rank, kind, target, amount, length, ss
    parts = [np.column_stack([who, t, order, np.full(len(doses), 2), kind, targets, amount, length, zeros])]
    evid4 = doses["evid"].to_numpy(int) == 4
    if evid4.any():
        parts.append(np.column_stack([who, t, order, zeros, np.full(len(doses), RESET), zeros, zeros, zeros,
                                      zeros])[evid4])
    if ss.any():
        parts.append(np.column_stack([who, t, order, np.ones(len(doses)), np.full(len(doses), STEADY_STATE),
                                      targets, amount, length, interval])[ss])
    if len(resets):
        r_who = index.get_indexer(resets["subject"])
        r_t = resets["time"].to_numpy(float) - offset[r_who]
        n = len(resets)
        parts.append(np.column_stack([r_who, r_t, np.full(n, -1.0), np.zeros(n), np.full(n, RESET), np.zeros(n),
                                      np.zeros(n), np.zeros(n), np.zeros(n)]))
    rows = np.concatenate(parts)
    rows = rows[np.lexsort((rows[:, 3], rows[:, 2], rows[:, 1], rows[:, 0]))]
    return rows[:, [0, 1, 4, 5, 6, 7, 8]]


def _single_dose_only(model: Model, doses: pd.DataFrame, who: np.ndarray, resets: pd.DataFrame) -> None:
    counts = np.bincount(who)
    problem = None
    infused = (doses["rate"].to_numpy(float) > 0) | (doses["duration"].to_numpy(float) > 0)
    for check, what in ((counts[who] > 1, "several doses"), (infused, "an infusion (RATE or DUR)"),
                        (doses["ss"].to_numpy(int) == 1, "a steady-state dose (SS=1)"),
                        (doses["evid"].to_numpy(int) == 4, "a reset (EVID 4)")):
        if check.any():
            problem = (doses["subject"].iloc[int(np.flatnonzero(check)[0])], what)
            break
    if problem is None and len(resets):
        problem = (resets["subject"].iloc[0], "a reset (EVID 3)")
    if problem:
        raise ModelError(f"subject {problem[0]} has {problem[1]}, but model {model.name} takes a single dose at "
                         "t = 0 (through c.dose, in closed form): use a model whose ODE declares dosing targets "
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
    matrix = np.column_stack([baseline[n] for n in names])
    if not varying and not np.isnan(matrix).any():  # one segment per subject (the usual case)
        N = len(cohort.subject_ids)
        return np.arange(N + 1, dtype=np.int64), np.full(N, -np.inf), np.ascontiguousarray(matrix)
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
