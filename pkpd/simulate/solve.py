"""The reference solver: scipy's LSODA through every dose, infusion, reset and covariate change.

Subjects whose events fall at the same times are integrated together as one stacked system
(LSODA, switching between stiff and non-stiff methods, with the exact block-banded Jacobian
generated from the model's expressions), piece by piece between those times; at each, the
events are applied as the compiled kernel applies them (covariate changes, infusion ends,
resets and doses, then the records). A trial whose subjects are all dosed at t = 0 is one
stacked solve. Closed-form states are evaluated directly. This is what the compiled solver is
checked against (`pkpd.fit` at posterior draws, and the tests).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ..models import Model, numpy_functions
from ..models.spec import COVARIATES
from .design import Design
from .events import BOLUS, INFUSION_DURATION, INFUSION_RATE, RESET, STEADY_STATE, Schedule


class SolverError(RuntimeError):
    """The ODE solver failed; the message says for which model and why."""


@dataclass(frozen=True)
class Solution:
    """Predicted analytes on a time grid: `values[analyte]` has shape (len(times), N)."""

    times: np.ndarray
    values: dict


def covariate_matrix(n: int, model: Model | None = None, **values) -> np.ndarray:
    """(n_covariates, n) array in the order of model.covariate_names (default: the standard
    pkpd.models.COVARIATES); unknown names are an error."""
    names = model.covariate_names if model is not None else list(COVARIATES)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown covariate(s) {', '.join(unknown)}; the model knows {', '.join(names)}")
    out = np.zeros((len(names), n))
    for i, name in enumerate(names):
        if name in values:
            out[i] = np.broadcast_to(np.asarray(values[name], float), (n,))
    return out


def parameter_matrix(model: Model, values: dict | None, n: int) -> np.ndarray:
    """(n_parameters, n) array: typical values, replaced by `values[name]` (scalar or (n,))."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(model.parameter_names))
    if unknown:
        raise ValueError(f"model {model.name} has no parameter(s) {', '.join(unknown)}")
    out = np.empty((len(model.parameters), n))
    for i, p in enumerate(model.parameters):
        v = np.broadcast_to(np.asarray(values.get(p.name, p.typical), float), (n,))
        if not (np.all(np.isfinite(v)) and np.all(v > 0)):
            raise ValueError(f"parameter {p.name} must be positive and finite")
        out[i] = v
    return out


def predict_reference(design: Design, P: np.ndarray, *, rtol: float = 1e-8, atol: float = 1e-12) -> np.ndarray:
    """Predictions at the design's records (LSODA); P: (n_parameters, N)."""
    model = design.model
    f = numpy_functions(model)
    sched = design.schedule
    pred = np.full(design.n_obs, np.nan)
    # before the first dose: the pre-dose baseline, with the covariates of the record's time
    before = design.time < 0
    if before.any():
        C = sched.covariates_at(design.subject_index[before], design.time[before]).T
        Pi = P[:, design.subject_index[before]]
        for a, analyte in enumerate(design.analyte_names):
            rows = design.analyte[before] == a
            if rows.any():
                pred[np.flatnonzero(before)[rows]] = f.baseline[analyte](design.time[before][rows], Pi[:, rows],
                                                                         C[:, rows])
    after = ~before
    if not after.any():
        return pred
    if f.n_states == 0:  # closed forms: each record on its own, with its segment's covariates
        idx = np.flatnonzero(after)
        C = sched.covariates_at(design.subject_index[idx], design.time[idx]).T
        Y = np.empty((0, len(idx)))
        for a, analyte in enumerate(design.analyte_names):
            rows = design.analyte[idx] == a
            if rows.any():
                pred[idx[rows]] = f.observe[analyte](design.time[idx][rows], Y[:, rows], P[:, design.subject_index[idx]][:, rows],
                                                     C[:, rows])
        return pred
    for group, breaks in _groups(design, P).items():
        members = np.array(group)
        _solve_group(design, f, P, members, breaks, pred, rtol, atol)
    return pred


# --- grouping subjects by the times of their events -------------------------------------------
def _event_times(design: Design, f, P: np.ndarray, i: int) -> list[tuple[float, int, int]]:
    """(tau, priority, event index) of subject i's events, tau = recorded time + lag.
    Priority orders what happens at one time: covariates 0, infusion ends 1, events 2."""
    s = design.schedule
    out = []
    for e in range(s.start[i], s.start[i + 1]):
        tau = s.time[e]
        if s.kind[e] < RESET:  # doses arrive after their lag
            C = s.covariates_at(np.array([i]), np.array([s.time[e]])).T
            tau += float(f.lag[s.target[e]](P[:, [i]], C)[0]) if f.lag else 0.0
        out.append((float(tau), 2, e))
    return sorted(out, key=lambda x: (x[0], x[1]))


def _groups(design: Design, P) -> dict[tuple, tuple]:
    """Subjects with identical event times (including infusion ends and covariate changes)."""
    f = numpy_functions(design.model)
    s = design.schedule
    groups: dict[tuple, list[int]] = defaultdict(list)
    keys = {}
    for i in range(len(design.subjects)):
        times = []
        for tau, _, e in _event_times(design, f, P, i):
            times.append(tau)
            if s.kind[e] in (INFUSION_DURATION, INFUSION_RATE):
                times.append(tau + _duration(f, s, P, i, e))
        times += [t for t in s.seg_time[s.seg_start[i] + 1:s.seg_start[i + 1]]]
        key = tuple(sorted(set(t for t in times if t > 0 or t == 0.0)))
        groups[key].append(i)
        keys[i] = key
    return {tuple(members): key for key, members in groups.items()}


def _duration(f, s: Schedule, P, i, e) -> float:
    if s.kind[e] == INFUSION_DURATION:
        return float(s.length[e])
    C = s.covariates_at(np.array([i]), np.array([s.time[e]])).T
    F = float(f.bioavailability[s.target[e]](P[:, [i]], C)[0])
    return F * float(s.amount[e]) / float(s.length[e])


# --- one group: piecewise stacked LSODA --------------------------------------------------------
def _solve_group(design: Design, f, P, members: np.ndarray, breaks: tuple, pred, rtol, atol) -> None:
    s = design.schedule
    n, G = f.n_states, len(members)
    PG = P[:, members]
    C = s.covariates_at(members, np.zeros(G)).T.copy()  # in force at the first dose (t = 0)
    # each subject's actions at each break: (time, priority, what)
    actions: dict[float, list] = defaultdict(list)
    for g, i in enumerate(members):
        for tau, _, e in _event_times(design, f, P, i):
            actions[tau].append((2, g, ("event", e)))
            if s.kind[e] in (INFUSION_DURATION, INFUSION_RATE):
                actions[tau + _duration(f, s, P, i, e)].append((1, g, ("end", e)))
        for k in range(s.seg_start[i] + 1, s.seg_start[i + 1]):
            if s.seg_time[k] > 0:  # earlier changes are in C already
                actions[float(s.seg_time[k])].append((0, g, ("covariates", k)))
    y = f.initial(PG, C)
    rates = np.zeros((n, G))
    running: dict[int, tuple[int, int, float]] = {}  # event -> (member, state, rate)
    rows = np.flatnonzero(np.isin(design.subject_index, members) & (design.time >= 0))
    member_of = {i: g for g, i in enumerate(members)}
    record_times = design.time[rows]
    stops = sorted(set(breaks) | set(record_times.tolist()) | {0.0})
    t = 0.0
    for stop in stops:
        if stop > t:
            y = _lsoda(f, y, t, stop, PG, C, rates, rtol, atol, design.model.name)
            t = stop
        for priority, g, (what, ref) in sorted(actions.get(stop, ()), key=lambda a: a[0]):
            i = members[g]
            if what == "covariates":
                C[:, g] = s.covariates[ref]
            elif what == "end":
                if ref in running:  # (a reset may have stopped it already)
                    member, state, rate = running.pop(ref)
                    rates[state, g] -= rate
            else:
                y, rates = _apply_event(design, f, P, PG, C, y, rates, running, g, i, ref, t, rtol, atol)
        here = rows[record_times == stop]
        for a, analyte in enumerate(design.analyte_names):
            mine = here[design.analyte[here] == a]
            if mine.size:
                cols = np.array([member_of[i] for i in design.subject_index[mine]])
                pred[mine] = f.observe[analyte](np.full(mine.size, stop), y[:, cols], PG[:, cols], C[:, cols])


def _apply_event(design, f, P, PG, C, y, rates, running, g, i, e, t, rtol, atol):
    s = design.schedule
    kind = s.kind[e]
    if kind in (RESET, STEADY_STATE):
        y[:, g] = f.initial(PG[:, [g]], C[:, [g]])[:, 0]
        for key in [k for k, (member, _, _) in running.items() if member == g]:
            _, state, rate = running.pop(key)
            rates[state, g] -= rate
        if kind == STEADY_STATE:
            y[:, g] = _steady_state(design, f, PG[:, [g]], C[:, [g]], y[:, [g]], i, e, t, rtol, atol)[:, 0]
        return y, rates
    state, F, rate, _ = _dose(design, f, PG[:, [g]], C[:, [g]], e)
    if kind == BOLUS:
        y[state, g] += F * s.amount[e]
    else:
        running[e] = (g, state, rate)
        rates[state, g] += rate
    return y, rates


def _dose(design: Design, f, P1, C1, e) -> tuple[int, float, float, float]:
    """(state, F, infusion rate, infusion duration) of event e for one subject."""
    s = design.schedule
    k = s.target[e]
    F = float(f.bioavailability[k](P1, C1)[0])
    state = int(design.dose_state[k])
    if s.kind[e] == INFUSION_DURATION:
        return state, F, F * s.amount[e] / s.length[e], float(s.length[e])
    if s.kind[e] == BOLUS:
        return state, F, 0.0, 0.0
    return state, F, float(s.length[e]), F * s.amount[e] / s.length[e]


def _steady_state(design, f, P1, C1, y1, i, e, t, rtol, atol, cycles: int = 1000) -> np.ndarray:
    """The state at t of the regimen of the next dose (e + 1) given every II until then, each
    dose arriving after its lag, repeated over [t - II, t] until it settles."""
    s = design.schedule
    interval = float(s.ss[e])
    d = e + 1
    state, F, rate, duration = _dose(design, f, P1, C1, d)
    lag = float(f.lag[s.target[d]](P1, C1)[0])
    if lag + duration >= interval:
        raise SolverError(f"model {design.model.name}: subject {design.subjects[i]}: a steady-state dose whose lag "
                          f"and infusion ({lag:g} + {duration:g}) last as long as its interval {interval:g}")
    none = np.zeros_like(y1)
    y = y1.copy()
    for _ in range(cycles):
        start = y.copy()
        arrival = t - interval + lag
        y = _lsoda(f, y, t - interval, arrival, P1, C1, none, rtol, atol, design.model.name)
        if s.kind[d] == BOLUS:
            y[state, 0] += F * s.amount[d]
            y = _lsoda(f, y, arrival, t, P1, C1, none, rtol, atol, design.model.name)
        else:
            rates = np.zeros_like(y)
            rates[state, 0] = rate
            y = _lsoda(f, y, arrival, arrival + duration, P1, C1, rates, rtol, atol, design.model.name)
            y = _lsoda(f, y, arrival + duration, t, P1, C1, none, rtol, atol, design.model.name)
        if np.all(np.abs(y - start) <= 1e-9 * np.abs(y) + atol):
            return y
    raise SolverError(f"model {design.model.name}: subject {design.subjects[i]} did not reach steady state "
                      f"in {cycles} dosing intervals")


def _lsoda(f, y0, t0, t1, P, C, rates, rtol, atol, name) -> np.ndarray:
    """States at t1 from y0 at t0 (n, G): odeint (LSODA) on the subject-major layout y[j*n + i],
    whose Jacobian is banded (each subject's n x n block on the diagonal)."""
    from scipy.integrate import odeint  # here: scipy.integrate costs 0.4 s of every command's start

    n, G = y0.shape
    band = n - 1
    i, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    band_rows = np.repeat((i - k + band).ravel()[:, None], G, axis=1)
    band_cols = (np.arange(G)[None, :] * n + k.ravel()[:, None])
    flat_rates = rates.T.ravel()

    def rhs(y, t):
        return f.rhs(t, y.reshape(G, n).T, P, C).T.ravel() + flat_rates

    def jac(y, t):
        J = f.jacobian(t, y.reshape(G, n).T, P, C).reshape(n * n, G)
        out = np.zeros((2 * band + 1, G * n))
        out[band_rows, band_cols] = J
        return out

    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        y, info = odeint(rhs, y0.T.ravel(), [t0, t1], Dfun=jac, ml=band, mu=band, rtol=rtol, atol=atol,
                         mxstep=100_000, full_output=True)
    if info["message"] != "Integration successful." or not np.all(np.isfinite(y)):
        with np.errstate(all="ignore"):
            start = rhs(y0.T.ravel(), t0)
        if not np.all(np.isfinite(start)) or info["message"] == "Integration successful.":
            where = "at its start" if not np.all(np.isfinite(start)) else "during the interval"
            raise SolverError(f"model {name}: the right-hand side (derivatives) gives NaN or infinity "
                              f"{where} (t = {t0:g} to {t1:g}); check the model's equations for 0/0, log "
                              "of 0 or a negative number, or an overflow, and the parameter values")
        raise SolverError(f"model {name}: the ODE solver failed between t = {t0:g} and {t1:g} "
                          f"({info['message']}); check the parameter values")
    return y[-1].reshape(G, n).T


def solve(model: Model, times, P: np.ndarray, C: np.ndarray, analytes=None, *, rtol: float = 1e-8,
          atol: float = 1e-12) -> Solution:
    """Predicted analytes of N subjects on a common time grid, each given one dose at t = 0 of
    the amount in its `dose` covariate (C: (n_covariates, N), see `covariate_matrix`; P:
    (n_parameters, N)). Negative times: the pre-dose baseline. For other regimens build a
    Cohort and use `predict`."""
    times = np.asarray(times, float)
    analytes = list(analytes) if analytes is not None else model.analytes
    unknown = sorted(set(analytes) - set(model.analytes))
    if unknown:
        raise ValueError(f"model {model.name} does not predict {', '.join(unknown)}; it predicts "
                         f"{', '.join(model.analytes)}")
    design = Design.on_grid(model, np.asarray(C, float), times, analytes)
    pred = predict_reference(design, np.asarray(P, float), rtol=rtol, atol=atol)
    N = P.shape[1]
    values = {}
    for a in analytes:
        rows = np.asarray(design.analyte_names)[design.analyte] == a
        out = np.empty((len(times), N))
        out[design.grid_index[rows], design.subject_index[rows]] = pred[rows]
        values[a] = out
    return Solution(times, values)
