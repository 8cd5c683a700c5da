"""Individual (per-subject) fits with lmfit: initial values for the population engine.

All subjects are fitted in one lmfit minimisation. The objective is a sum of independent
per-subject objectives, so its optimum is every subject's own optimum; fitting them jointly
lets one stacked ODE solve serve all subjects, and because a subject's residuals depend only
on its own parameters, a finite-difference Jacobian perturbs one parameter of every subject at
once: it costs as many solves as one subject has parameters, whatever the number of subjects.
The joint stopping rule is the slowest subject's, so convergence is judged per subject after
each round (a Gauss-Newton step on its own data must not lower its -2 log L by 0.01 or more),
and the subjects still improving are refitted on their own; standard errors come from each
subject's own information.

Residuals are censoring-aware: a quantified value gives its standardised residual; a value
below the LLOQ (M3) gives sqrt(-2 log P(y < LLOQ)), so that the sum of squares is -2 log L up to
constants. Residual-error SDs are the model's (fixed). Parameters are estimated on the log scale
within their bounds.

A subject whose data cannot be fitted (no observations of the model's analytes, or an ODE that
fails at the initial values) is reported in the result with the reason, not raised.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import lmfit
import numpy as np
import pandas as pd
import scipy.sparse as sparse
from scipy.sparse.linalg import aslinearoperator
import xarray as xr

from ..data.cohort import Cohort
from ..models import Model
from ..simulate.compiled import Design, Tolerances, predict_compiled
from ..simulate.solve import SolverError
from . import likelihood

PENALTY = 1e3  # residual given to every record while a trial step makes the ODE solver fail


def default_estimated(model: Model) -> list[str]:
    """The parameters an individual fit estimates by default: those with inter-individual
    variability, never fixed constants."""
    return [p.name for p in model.parameters if p.iiv is not None and not p.fixed]


class _Problem:
    """The data of the fit as arrays (records sorted by subject and time), and the residuals.

    Predictions come from the compiled solver (pkpd.simulate.compiled), whose accuracy is
    checked against LSODA in the tests and at posterior draws by pkpd.fit."""

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
        self.rows = {a: d.analyte == d.analyte_names.index(a) for a in self.analytes}
        self.obs = d.time  # one entry per record

    def matrix(self, log_values: np.ndarray) -> np.ndarray:
        """(n_parameters, N) individual values from the (N, n_estimated) log estimates."""
        P = self.P_fixed.copy()
        P[self.est_rows] = np.exp(log_values.T)
        return P

    def predictions(self, P: np.ndarray) -> np.ndarray:
        pred, _ = predict_compiled(self.design, P.T, [], self.steps)
        if not np.all(np.isfinite(pred)):
            raise SolverError(f"model {self.model.name}: non-finite predictions")
        return pred

    def _error_arrays(self):
        observed = self.analytes
        slot = np.array([observed.index(self.design.analyte_names[a]) for a in self.design.analyte])
        specs = [self.model.observations[a] for a in observed]
        return (np.array([likelihood.ERROR_CODE[o.error] for o in specs])[slot],
                np.array([o.sigma for o in specs])[slot], np.array([o.additive for o in specs])[slot])

    def residuals(self, pred: np.ndarray) -> np.ndarray:
        """Censoring-aware residuals, with squared sum = -2 log L up to constants."""
        error, sigma, additive = self._error_arrays()
        return likelihood.residuals(pred, self.value, self.lloq, self.censored, error, sigma, additive)

    def minus_two_log_lik(self, pred: np.ndarray) -> np.ndarray:
        """-2 log L of each record, with the model's residual SDs."""
        error, sigma, additive = self._error_arrays()
        return -2 * likelihood.pointwise(pred, self.value, self.lloq, self.censored, error, sigma, additive)


def fit_individual(model: Model, cohort: Cohort, *, estimate: Sequence[str] | None = None,
                   subjects: Sequence[str] | None = None,
                   initial: Mapping[str, float] | pd.DataFrame | None = None,
                   max_nfev: int = 200, steps: Tolerances = Tolerances(), rounds: int = 3) -> xr.Dataset:
    """Fit every subject of `cohort` (or `subjects`) with lmfit; one call for all subjects.

    estimate: parameters to estimate (default: those with inter-individual variability);
              the others stay at their typical (or `initial`) values.
    initial:  starting values, one per parameter, or a frame indexed by subject.
    max_nfev, rounds: a round is one joint minimisation of at most max_nfev evaluations; after
              it, each subject is converged when a Gauss-Newton step on its own data lowers its
              -2 log L by less than 0.01. Subjects that are not get further rounds on their
              own (the joint stopping rule is the slowest subject's), up to `rounds` in all.
    Returns an xarray Dataset with dims (subject, parameter): estimate, stderr, rse_percent,
    initial; and per subject: converged, reason, n_obs, n_blq, ofv (-2 log L), aic, bic.
    """
    if max_nfev < 1 or rounds < 1:
        raise ValueError(f"max_nfev and rounds must be at least 1 (got {max_nfev} and {rounds})")
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


def _evaluate(problem: _Problem, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, residuals) at log estimates x (N, k): NaN predictions and PENALTY residuals
    where the solver fails, PENALTY where a residual is not finite."""
    try:
        pred = problem.predictions(problem.matrix(x))
    except SolverError:
        return np.full(len(problem.obs), np.nan), np.full(len(problem.obs), PENALTY)
    r = problem.residuals(pred)
    return pred, np.where(np.isfinite(r), r, PENALTY)


def _residual_of(problem: _Problem, x: np.ndarray) -> np.ndarray:
    return _evaluate(problem, x)[1]


def _derivatives(problem: _Problem, x: np.ndarray, r0: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """(n_obs, k): each record's residual differentiated (forward differences) with respect to
    each log parameter of its own subject. A subject's residuals depend only on its own
    parameters, so one parameter of every subject moves at a time: k solves, whatever N."""
    lower = np.log([problem.model.parameter(n).bounds[0] for n in problem.estimated])
    upper = np.log([problem.model.parameter(n).bounds[1] for n in problem.estimated])
    D = np.empty((len(r0), x.shape[1]))
    for g in range(x.shape[1]):
        h = step * np.maximum(1.0, np.abs(x[:, g]))
        h = np.where(x[:, g] + h > upper[g], -h, h)  # step back at the upper bound
        h = np.where(x[:, g] + h < lower[g], np.abs(h), h)
        xg = x.copy()
        xg[:, g] += h
        D[:, g] = (_residual_of(problem, xg) - r0) / h[problem.s_index]
    return D


def _minimise(problem: _Problem, x0: np.ndarray, max_nfev: int) -> np.ndarray:
    """Joint least squares over all subjects of `problem` from log values x0 (N, k); returns x."""
    N, k = x0.shape
    params = lmfit.Parameters()
    for i in range(N):
        for g, name in enumerate(problem.estimated):
            lo, hi = problem.model.parameter(name).bounds
            params.add(f"p{i}_{name}", value=float(np.clip(x0[i, g], math.log(lo), math.log(hi))),
                       min=math.log(lo), max=math.log(hi))
    n_obs = len(problem.obs)

    def values(pars) -> np.ndarray:
        return np.array([pars[f"p{i}_{n}"].value for i in range(N) for n in problem.estimated]).reshape(N, k)

    def residual(pars):
        return _residual_of(problem, values(pars))

    def jacobian(pars, *args, **kwargs):
        x = values(pars)
        D = _derivatives(problem, x, _residual_of(problem, x))
        rows = np.repeat(np.arange(n_obs), k)
        cols = (problem.s_index[:, None] * k + np.arange(k)[None, :]).ravel()
        return aslinearoperator(sparse.csr_matrix((D.ravel(), (rows, cols)), shape=(n_obs, N * k)))

    minimizer = _SparseJacobianMinimizer(residual, params, scale_covar=False, calc_covar=False)
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
    pred, r0 = _evaluate(problem, x)
    D = _derivatives(problem, x, r0)
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
        decrease = np.maximum(decrease, before - ofv(_residual_of(problem, trial)))
    return {"pred": pred, "decrease": decrease, "cov": cov}


class _SparseJacobianMinimizer(lmfit.Minimizer):
    """lmfit Minimizer that hands a user's Jacobian operator to scipy unchanged.

    lmfit 1.3 coerces a Jacobian to a dense float array before scipy sees it; a LinearOperator
    passes (with least_squares there is no bounds transformation to apply to the Jacobian). The
    covariance is not lmfit's: `_assess` computes it per subject."""

    def _jacobian(self, fvars, apply_bounds_transformation=True):
        pars = self.result.params
        for ivar, name in enumerate(self.result.var_names):
            pars[name].value = fvars[ivar]
        pars.update_constraints()
        return self.jacfcn(pars, *self.userargs, **self.userkws)


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
    if result is not None:
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
            ok = np.isfinite(ofv[i]) and not at_bound and not still_falling
            converged[i] = ok
            if not ok:
                reason[i] = ("objective is not finite at the estimate" if not np.isfinite(ofv[i]) else
                             f"estimate at a bound: {', '.join(at_bound)}" if at_bound else
                             f"optimiser did not converge: -2 log L still falling after {result['rounds']} "
                             f"round(s) of at most {result['max_nfev']} evaluations (a Gauss-Newton step "
                             f"lowers it by {decrease:.3g}); raise max_nfev or rounds")
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
        },
        coords={"subject": np.array(subjects, dtype=str), "parameter": np.array(estimate, dtype=str)},
        attrs={"model": model.name, "model_hash": model.hash, "data_source": str(cohort.source),
               "method": "lmfit least_squares (joint, block-sparse Jacobian); M3 censoring",
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
