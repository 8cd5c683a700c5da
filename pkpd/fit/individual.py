"""Individual (per-subject) fits with lmfit: initial values for the population engine.

All subjects are fitted in one lmfit minimisation. The objective is a sum of independent
per-subject objectives, so its optimum is every subject's own optimum; fitting them jointly
lets one compiled solve serve all subjects. Predictions come from the error-controlled solver
(`pkpd.simulate.compiled`, adaptive steps) with forward sensitivities, so the Jacobian is
exact (not finite differences, which an adaptive step sequence would make noisy) and costs one
solve. The joint stopping rule is the slowest subject's, so convergence is judged per subject
after each round (a Gauss-Newton step on its own data must not lower its -2 log L by 0.01 or
more), and the subjects still improving are refitted on their own; standard errors come from
each subject's own information.

The solver is checked, not trusted: at the estimates the compiled predictions are compared with
LSODA (`pkpd.simulate.solve`) and each subject's largest log difference is reported
(`solver_error`); a subject above the tolerance (a tenth of the smallest residual SD) is not
converged. With `starts` > 1 each subject is also fitted from further starting values drawn
from the priors, and optima that fit as well as the best but sit elsewhere are reported
(`n_modes`, `alternative`): the data then do not tell the modes apart (the flip-flop of an
oral absorption model, ka against CL/V, is the classic case; parameterise ka = ke + delta to
exclude it).

Residuals are censoring-aware: a quantified value gives its standardised residual; a value
below the LLOQ (M3) gives sqrt(-2 log P(y < LLOQ)), so that the sum of squares is -2 log L up to
constants. Residual-error SDs are the model's (fixed). Parameters are estimated on the log scale
within their bounds.

A subject whose data cannot be fitted (no observations of the model's analytes, or an ODE that
fails at the initial values) is reported in the result with the reason, not raised.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ..data.cohort import Cohort
from ..models import Model
from ..simulate.compiled import Design, Tolerances, predict_compiled
from ..simulate.solve import SolverError, predict_reference
from . import likelihood

PENALTY = 1e3  # residual given to every record while a trial step makes the ODE solver fail
#: compiled predictions may differ from LSODA's by this fraction of the smallest residual SD
#: (log scale) before a fit, individual or population, is not trusted
SOLVER_TOLERANCE = 0.1

#: another optimum within this much -2 log L of the best, elsewhere, is a second mode
MODE_OFV = 2.0
MODE_DISTANCE = 0.2  # |log ratio| of some parameter between modes


def solver_tolerance(model: Model) -> float:
    """The largest log difference from LSODA a fit accepts: a tenth of the smallest log-scale or
    proportional residual SD (0.1 when the error models are all additive)."""
    sigmas = [o.sigma for o in model.observations.values() if o.has_sigma]
    return SOLVER_TOLERANCE * min(sigmas + [1.0])


def default_estimated(model: Model) -> list[str]:
    """The parameters an individual fit estimates by default: those with inter-individual
    variability, never fixed constants."""
    return [p.name for p in model.parameters if p.iiv is not None and not p.fixed]


class _Problem:
    """The data of the fit as arrays (records sorted by subject and time), and the residuals
    with their exact derivatives with respect to each subject's log parameters."""

    def __init__(self, model: Model, cohort: Cohort, estimated: list[str], subjects: list[str],
                 fixed_values: pd.DataFrame, steps: Tolerances):
        self.model = model
        self.estimated = estimated
        self.subjects = subjects
        self.steps = steps
        self.design = Design(model, cohort.select(subjects))
        d = self.design
        self.s_index = d.subject_index
        self.P_fixed = np.vstack([fixed_values.loc[subjects, p.name].to_numpy(float)
                                  for p in model.parameters])
        self.est_rows = [model.parameter_names.index(n) for n in estimated]
        self.value, self.lloq, self.censored = d.value, d.lloq, d.censored
        self.analytes = [a for i, a in enumerate(d.analyte_names) if (d.analyte == i).any()]
        self.obs = d.time  # one entry per record
        self.error, self.sigma, self.additive = self._error_arrays()
        self._cache: tuple | None = None

    def matrix(self, log_values: np.ndarray) -> np.ndarray:
        """(n_parameters, N) individual values from the (N, n_estimated) log estimates."""
        P = self.P_fixed.copy()
        P[self.est_rows] = np.exp(log_values.T)
        return P

    def predictions(self, P: np.ndarray, with_derivatives: bool = False):
        """Predictions at P (n_parameters, N); with derivatives w.r.t. the log estimates."""
        pred, dpred = predict_compiled(self.design, P.T, self.estimated if with_derivatives else [], self.steps)
        if not np.all(np.isfinite(pred)):
            raise SolverError(f"model {self.model.name}: non-finite predictions")
        if with_derivatives:
            dpred = dpred * P[self.est_rows].T[self.s_index]  # d/d log theta
            return pred, dpred
        return pred

    def _error_arrays(self):
        observed = self.analytes
        d = self.design
        slot = np.array([observed.index(d.analyte_names[a]) for a in d.analyte], dtype=int)
        specs = [self.model.observations[a] for a in observed]
        return (np.array([likelihood.ERROR_CODE[o.error] for o in specs])[slot],
                np.array([o.sigma for o in specs])[slot], np.array([o.additive for o in specs])[slot])

    def residuals(self, pred: np.ndarray) -> np.ndarray:
        """Censoring-aware residuals, with squared sum = -2 log L up to constants."""
        return likelihood.residuals(pred, self.value, self.lloq, self.censored, self.error, self.sigma,
                                    self.additive)

    def minus_two_log_lik(self, pred: np.ndarray) -> np.ndarray:
        """-2 log L of each record, with the model's residual SDs."""
        return -2 * likelihood.pointwise(pred, self.value, self.lloq, self.censored, self.error, self.sigma,
                                         self.additive)

    def evaluate(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predictions, residuals, d residuals / d log estimates (n_obs, k)) at log estimates x
        (N, k): NaN predictions, PENALTY residuals and a zero Jacobian where the solver fails."""
        key = x.tobytes()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        n, k = len(self.obs), x.shape[1]
        try:
            pred, dpred = self.predictions(self.matrix(x), with_derivatives=True)
            r, J = likelihood.residual_derivatives(pred, dpred, self.value, self.lloq, self.censored, self.error,
                                                   self.sigma, self.additive)
            bad = ~np.isfinite(r) | ~np.all(np.isfinite(J), axis=1)
            r, J = np.where(bad, PENALTY, r), np.where(bad[:, None], 0.0, J)
        except SolverError:
            pred, r, J = np.full(n, np.nan), np.full(n, PENALTY), np.zeros((n, k))
        self._cache = (key, (pred, r, J))
        return pred, r, J


def fit_individual(model: Model, cohort: Cohort, *, estimate: Sequence[str] | None = None,
                   subjects: Sequence[str] | None = None,
                   initial: Mapping[str, float] | pd.DataFrame | None = None,
                   max_nfev: int = 200, steps: Tolerances = Tolerances(), rounds: int = 3, starts: int = 1,
                   seed: int = 0) -> xr.Dataset:
    """Fit every subject of `cohort` (or `subjects`) with lmfit; one call for all subjects.

    estimate: parameters to estimate (default: those with inter-individual variability);
              the others stay at their typical (or `initial`) values.
    initial:  starting values, one per parameter, or a frame indexed by subject.
    max_nfev, rounds: a round is one joint minimisation of at most max_nfev evaluations; after
              it, each subject is converged when a Gauss-Newton step on its own data lowers its
              -2 log L by less than 0.01. Subjects that are not get further rounds on their
              own (the joint stopping rule is the slowest subject's), up to `rounds` in all.
    steps:    the adaptive solver's tolerances (its accuracy is checked against LSODA).
    starts, seed: with starts > 1, starts - 1 further fits from starting values drawn from the
              priors (seeded); the best optimum is kept and other optima as good are reported.
    Returns an xarray Dataset with dims (subject, parameter): estimate, stderr, rse_percent,
    initial, alternative (another optimum as good, or NaN); and per subject: converged, reason,
    n_obs, n_blq, ofv (-2 log L), aic, bic, solver_error, n_modes.
    """
    if max_nfev < 1 or rounds < 1 or starts < 1:
        raise ValueError(f"max_nfev, rounds and starts must be at least 1 (got {max_nfev}, {rounds} and {starts})")
    estimate = list(estimate) if estimate is not None else default_estimated(model)
    unknown = sorted(set(estimate) - set(model.parameter_names))
    if unknown:
        raise ValueError(f"model {model.name} has no parameter(s) {', '.join(unknown)} to estimate; "
                         f"it has {', '.join(model.parameter_names)}")
    if not estimate:
        raise ValueError(f"nothing to estimate: model {model.name} has no parameter with variability; "
                         "name the parameters with estimate=[...]")
    fixed = [n for n in estimate if model.parameter(n).fixed]
    if fixed:
        raise ValueError(f"parameter(s) {', '.join(fixed)} are fixed constants of model {model.name}")
    wanted = list(subjects) if subjects is not None else cohort.subject_ids
    missing = sorted(set(wanted) - set(cohort.subject_ids))
    if missing:
        raise ValueError(f"subject(s) {', '.join(missing)} are not in the cohort")
    start = _initial_values(model, wanted, initial)

    reasons: dict[str, str] = {}
    obs = cohort.observations
    usable = obs[~obs["mdv"] & obs["analyte"].isin(model.analytes)]
    counts = usable.groupby("subject").size()
    for s in wanted:
        if counts.get(s, 0) == 0:
            reasons[s] = (f"no observations of the analytes {model.name} predicts "
                          f"({', '.join(model.analytes)})")
    candidates = [s for s in wanted if s not in reasons]
    candidates = _drop_failing(model, cohort, estimate, candidates, start, steps, reasons)

    result = None
    if candidates:
        result = _fit_in_rounds(model, cohort, estimate, candidates, start, steps, max_nfev, rounds)
        result["alternative"] = np.full((len(candidates), len(estimate)), np.nan)
        result["n_modes"] = np.ones(len(candidates), int)
        rng = np.random.default_rng(seed)
        for _ in range(starts - 1):
            _another_start(model, cohort, estimate, candidates, start, steps, max_nfev, rounds, rng, result)
        result["solver_error"] = _solver_error(result["problem"], result["x"], result["pred"])
    return _dataset(model, cohort, estimate, wanted, start, reasons, result)


def _initial_values(model: Model, subjects: list[str], initial) -> pd.DataFrame:
    frame = pd.DataFrame({p.name: np.full(len(subjects), p.typical) for p in model.parameters},
                         index=pd.Index(subjects, name="subject"))
    if isinstance(initial, pd.DataFrame):
        given = initial.copy()
        given.index = given.index.astype(str)
        for col in given.columns.intersection(frame.columns):
            frame[col] = given[col].reindex(frame.index).fillna(frame[col])
    elif initial:
        unknown = sorted(set(initial) - set(frame.columns))
        if unknown:
            raise ValueError(f"initial values name unknown parameter(s) {', '.join(unknown)}")
        for name, value in initial.items():
            frame[name] = float(value)
    for p in model.parameters:
        lo, hi = p.bounds
        frame[p.name] = frame[p.name].clip(lo * (1 + 1e-9), hi * (1 - 1e-9))
    return frame


def _drop_failing(model, cohort, estimate, subjects, start, steps, reasons) -> list[str]:
    """Subjects whose ODE solves at the initial values; failures found by bisection."""
    def solves(group):
        try:
            problem = _Problem(model, cohort, estimate, group, start, steps)
            pred = problem.predictions(problem.P_fixed)
            return bool(np.all(np.isfinite(pred)))
        except (SolverError, FloatingPointError, ValueError):
            return False

    def search(group):
        if not group or solves(group):
            return list(group)
        if len(group) == 1:
            reasons[group[0]] = "the ODE solver fails at the initial values"
            return []
        half = len(group) // 2
        return search(group[:half]) + search(group[half:])

    return search(list(subjects))


#: a subject is converged when a Gauss-Newton step on its data lowers its -2 log L by less
DECREASE_TOLERANCE = 0.01


def _fit_in_rounds(model, cohort, estimate, subjects, start, steps, max_nfev, rounds) -> dict:
    problem = _Problem(model, cohort, estimate, subjects, start, steps)
    x = np.log(start.loc[subjects, estimate].to_numpy(float))
    todo = list(range(len(subjects)))
    for done in range(1, rounds + 1):
        part = problem if len(todo) == len(subjects) else \
            _Problem(model, cohort, estimate, [subjects[i] for i in todo], start, steps)
        x[todo] = _minimise(part, x[todo], max_nfev)
        assessment = _assess(problem, x)
        todo = [i for i in range(len(subjects)) if not assessment["decrease"][i] <= DECREASE_TOLERANCE]
        if not todo:
            break
    return {"problem": problem, "x": x, "rounds": done, "max_nfev": max_nfev, **assessment}


def _minimise(problem: _Problem, x0: np.ndarray, max_nfev: int) -> np.ndarray:
    """Joint least squares over all subjects of `problem` from log values x0 (N, k); returns x.
    The Jacobian is block-sparse: a subject's residuals depend only on its own parameters."""
    import lmfit

    N, k = x0.shape
    params = lmfit.Parameters()
    for i in range(N):
        for g, name in enumerate(problem.estimated):
            lo, hi = problem.model.parameter(name).bounds
            params.add(f"p{i}_{name}", value=float(np.clip(x0[i, g], math.log(lo), math.log(hi))),
                       min=math.log(lo), max=math.log(hi))
    n_obs = len(problem.obs)
    from scipy.sparse import csr_matrix  # here: scipy.sparse costs 0.2 s of every command's start
    from scipy.sparse.linalg import aslinearoperator

    rows = np.repeat(np.arange(n_obs), k)
    cols = (problem.s_index[:, None] * k + np.arange(k)[None, :]).ravel()

    def values(pars) -> np.ndarray:
        return np.array([pars[f"p{i}_{n}"].value for i in range(N) for n in problem.estimated]).reshape(N, k)

    def residual(pars):
        return problem.evaluate(values(pars))[1]

    def jacobian(pars, *args, **kwargs):
        J = problem.evaluate(values(pars))[2]
        return aslinearoperator(csr_matrix((J.ravel(), (rows, cols)), shape=(n_obs, N * k)))

    minimizer = _sparse_jacobian_minimizer()(residual, params, scale_covar=False, calc_covar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = minimizer.minimize(method="least_squares", jac=jacobian, tr_solver="lsmr",
                                 max_nfev=max_nfev)
    return values(out.params)


def _assess(problem: _Problem, x: np.ndarray) -> dict:
    """Per subject at log estimates x: how much a Gauss-Newton step on its own data (full, half
    or quarter, within the bounds) actually lowers its -2 log L (the convergence test: actual,
    not predicted, so that a kink, at tmax or a censoring limit, cannot keep a subject from
    converging), and the covariance of its log estimates, (J^T J)^-1 (residuals are
    standardised: -2 log L = sum r^2 + const); NaN where J^T J is singular, that is where the
    data do not determine every parameter."""
    N, k = x.shape
    pred, r0, D = problem.evaluate(x)
    step = np.zeros((N, k))
    cov = np.full((N, k, k), np.nan)
    for i in range(N):
        mine = problem.s_index == i
        J, r = D[mine], r0[mine]
        if not (np.all(np.isfinite(J)) and np.all(np.isfinite(r))):
            continue
        step[i] = np.linalg.lstsq(J, -r, rcond=None)[0]
        information = J.T @ J
        if np.linalg.matrix_rank(information) == k:
            cov[i] = np.linalg.inv(information)
    bounds = np.log([problem.model.parameter(n).bounds for n in problem.estimated])  # (k, 2)

    def ofv(r):
        return np.bincount(problem.s_index, np.square(r), minlength=N)

    before = ofv(r0)
    decrease = np.zeros(N)
    for fraction in (1.0, 0.5, 0.25):
        trial = np.clip(x + fraction * step, bounds[:, 0], bounds[:, 1])
        decrease = np.maximum(decrease, before - ofv(problem.evaluate(trial)[1]))
    return {"pred": pred, "decrease": decrease, "cov": cov, "ofv": before}


def _another_start(model, cohort, estimate, subjects, start, steps, max_nfev, rounds, rng, result) -> None:
    """Fit every subject again from values drawn from the priors; keep the better optimum and
    note an optimum as good as the best that lies elsewhere (a second mode)."""
    draws = start.copy()
    for name in estimate:
        prior = model.parameter(name).prior_or_default
        lo, hi = model.parameter(name).bounds
        draws[name] = np.clip(prior.median * np.exp(prior.sigma * rng.standard_normal(len(draws))),
                              lo * 1.001, hi / 1.001)
    other = _fit_in_rounds(model, cohort, estimate, subjects, draws, steps, max_nfev, rounds)
    ofv, other_ofv = result["ofv"], other["ofv"]
    for i in range(len(subjects)):
        apart = np.max(np.abs(other["x"][i] - result["x"][i])) > MODE_DISTANCE
        if not apart or not (np.isfinite(ofv[i]) and np.isfinite(other_ofv[i])):
            continue
        # where the subject's data do not determine every parameter (a ridge, singular
        # information) optima differ along it without being separate modes
        determined = np.all(np.isfinite(result["cov"][i])) and np.all(np.isfinite(other["cov"][i]))
        if other_ofv[i] < ofv[i] - MODE_OFV:  # clearly better: it becomes the estimate
            for key in ("x", "decrease", "cov", "ofv"):
                result[key][i] = other[key][i]
            result["n_modes"][i] = 1
            result["alternative"][i] = np.nan
        elif determined and abs(other_ofv[i] - ofv[i]) <= MODE_OFV:
            result["n_modes"][i] += 1
            result["alternative"][i] = np.exp(other["x"][i])
    result["pred"] = result["problem"].evaluate(result["x"])[0]


def _solver_error(problem: _Problem, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Each subject's largest |log(compiled / LSODA)| at its estimate (0 for closed forms)."""
    N = x.shape[0]
    if problem.model.is_closed_form or not np.all(np.isfinite(pred)):
        return np.where(np.isfinite(pred).all(), 0.0, np.nan) * np.ones(N)
    exact = predict_reference(problem.design, problem.matrix(x), rtol=1e-10, atol=1e-13)
    ok = (exact > 1e-8) & (pred > 1e-8)
    error = np.zeros(N)
    np.maximum.at(error, problem.s_index[ok], np.abs(np.log(pred[ok] / exact[ok])))
    return error


@functools.cache
def _sparse_jacobian_minimizer() -> type:
    """lmfit's Minimizer, handing a user's Jacobian operator to scipy unchanged.

    lmfit 1.3 coerces a Jacobian to a dense float array before scipy sees it; a LinearOperator
    passes (with least_squares there is no bounds transformation to apply to the Jacobian). The
    covariance is not lmfit's: `_assess` computes it per subject. lmfit is imported here, when a
    fit needs it: its import (about a second) would slow every command that does not fit."""
    import lmfit

    class SparseJacobianMinimizer(lmfit.Minimizer):
        def _jacobian(self, fvars, apply_bounds_transformation=True):
            pars = self.result.params
            for ivar, name in enumerate(self.result.var_names):
                pars[name].value = fvars[ivar]
            pars.update_constraints()
            return self.jacfcn(pars, *self.userargs, **self.userkws)

    return SparseJacobianMinimizer


def _dataset(model, cohort, estimate, subjects, start, reasons, result) -> xr.Dataset:
    S, K = len(subjects), len(estimate)
    est = np.full((S, K), np.nan)
    se = np.full((S, K), np.nan)
    init = np.vstack([start.loc[subjects, n].to_numpy(float) for n in estimate]).T if S else np.empty((0, K))
    converged = np.zeros(S, bool)
    reason = np.array([reasons.get(s, "") for s in subjects], dtype=object)
    n_obs = np.zeros(S, int)
    n_blq = np.zeros(S, int)
    ofv = np.full(S, np.nan)
    solver_error = np.full(S, np.nan)
    n_modes = np.zeros(S, int)
    alternative = np.full((S, K), np.nan)
    if result is not None:
        tolerance = solver_tolerance(model)
        problem, x, pred = result["problem"], result["x"], result["pred"]
        contributions = problem.minus_two_log_lik(pred) if np.all(np.isfinite(pred)) else np.full(len(pred), np.nan)
        order = {s: i for i, s in enumerate(subjects)}
        for j, s in enumerate(problem.subjects):
            i = order[s]
            mine = problem.s_index == j
            est[i] = np.exp(x[j])
            n_obs[i] = int(mine.sum())
            n_blq[i] = int((problem.censored[mine] != 0).sum())
            ofv[i] = float(np.sum(contributions[mine]))
            se[i] = est[i] * np.sqrt(np.clip(np.diag(result["cov"][j]), 0, None))  # delta method from log
            at_bound = _at_bounds(model, estimate, est[i])
            decrease = result["decrease"][j]
            still_falling = not decrease <= DECREASE_TOLERANCE
            solver_error[i] = result["solver_error"][j]
            inaccurate = not solver_error[i] <= tolerance
            n_modes[i] = result["n_modes"][j]
            alternative[i] = result["alternative"][j]
            ok = np.isfinite(ofv[i]) and not at_bound and not still_falling and not inaccurate
            converged[i] = ok
            if not ok:
                reason[i] = ("objective is not finite at the estimate" if not np.isfinite(ofv[i]) else
                             f"estimate at a bound: {', '.join(at_bound)}" if at_bound else
                             f"optimiser did not converge: -2 log L still falling after {result['rounds']} "
                             f"round(s) of at most {result['max_nfev']} evaluations (a Gauss-Newton step "
                             f"lowers it by {decrease:.3g}); raise max_nfev or rounds" if still_falling else
                             f"the compiled solver differs from LSODA by {solver_error[i]:.2g} on the log scale at "
                             f"the estimate (tolerance {tolerance:.2g}); tighten steps=Tolerances(rtol=1e-6)")
            elif n_modes[i] > 1:
                reason[i] = (f"{n_modes[i]} optima fit equally well (within {MODE_OFV:g} of -2 log L): "
                             + ", ".join(f"{n} {a:.3g} or {b:.3g}" for n, a, b in zip(estimate, est[i], alternative[i])
                                         if abs(math.log(a / b)) > MODE_DISTANCE)
                             + "; the data do not tell them apart: constrain the model (e.g. ka = ke + delta)")
    k = K
    ds = xr.Dataset(
        {
            "estimate": (("subject", "parameter"), est),
            "stderr": (("subject", "parameter"), se),
            "rse_percent": (("subject", "parameter"), 100 * se / est),
            "initial": (("subject", "parameter"), init),
            "converged": ("subject", converged),
            "reason": ("subject", reason.astype(str)),
            "n_obs": ("subject", n_obs),
            "n_blq": ("subject", n_blq),
            "ofv": ("subject", ofv),
            "aic": ("subject", ofv + 2 * k),
            "bic": ("subject", ofv + k * np.log(np.maximum(n_obs, 1))),
            "solver_error": ("subject", solver_error),
            "n_modes": ("subject", n_modes),
            "alternative": (("subject", "parameter"), alternative),
        },
        coords={"subject": np.array(subjects, dtype=str), "parameter": np.array(estimate, dtype=str)},
        attrs={"model": model.name, "model_hash": model.hash, "data_source": str(cohort.source),
               "method": "lmfit least_squares (joint, block-sparse exact Jacobian from forward sensitivities; "
                         "adaptive solver checked against LSODA); M3 censoring",
               "fixed_parameters": ", ".join(n for n in model.parameter_names if n not in estimate)},
    )
    ds["estimate"].attrs["units"] = "; ".join(f"{n}: {model.parameter(n).unit}" for n in estimate)
    return ds


def _at_bounds(model: Model, names, values) -> list[str]:
    out = []
    for name, v in zip(names, values):
        lo, hi = model.parameter(name).bounds
        if v <= lo * 1.001 or v >= hi / 1.001:
            out.append(name)
    return out


def individual_parameters(fit: xr.Dataset, model: Model, converged_only: bool = False) -> pd.DataFrame:
    """Per-subject values of every model parameter: estimates where fitted, typical otherwise."""
    subjects = [str(s) for s in fit["subject"].values]
    frame = pd.DataFrame({p.name: np.full(len(subjects), p.typical) for p in model.parameters},
                         index=pd.Index(subjects, name="subject"))
    for name in fit["parameter"].values:
        values = fit["estimate"].sel(parameter=name).to_numpy()
        use = np.isfinite(values) & (fit["converged"].to_numpy() if converged_only else True)
        frame.loc[use, str(name)] = values[use]
    return frame
