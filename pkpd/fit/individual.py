"""Individual (per-subject) fits with lmfit: initial values for the population engine.

All subjects are fitted in one lmfit minimisation. The objective is a sum of independent
per-subject objectives, so its optimum is every subject's own optimum; fitting them jointly
lets one stacked ODE solve serve all subjects, and because a subject's residuals depend only
on its own parameters, a finite-difference Jacobian perturbs one parameter of every subject at
once: it costs as many solves as one subject has parameters, whatever the number of subjects.

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
from ..simulate.compiled import Design, StepSizes, predict_compiled
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
                 fixed_values: pd.DataFrame, steps: StepSizes):
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
                   max_nfev: int = 200, steps: StepSizes = StepSizes()) -> xr.Dataset:
    """Fit every subject of `cohort` (or `subjects`) with lmfit; one call for all subjects.

    estimate: parameters to estimate (default: those with inter-individual variability);
              the others stay at their typical (or `initial`) values.
    initial:  starting values, one per parameter, or a frame indexed by subject.
    Returns an xarray Dataset with dims (subject, parameter): estimate, stderr, rse_percent,
    initial; and per subject: converged, reason, n_obs, n_blq, ofv (-2 log L), aic, bic.
    """
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
        problem = _Problem(model, cohort, estimate, candidates, start, steps)
        result = _minimise(problem, start, max_nfev)
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


def _minimise(problem: _Problem, start: pd.DataFrame, max_nfev: int, step: float = 1e-5):
    N, k = len(problem.subjects), len(problem.estimated)
    params = lmfit.Parameters()
    lower, upper = [], []
    for i, s in enumerate(problem.subjects):
        for name in problem.estimated:
            lo, hi = problem.model.parameter(name).bounds
            params.add(f"p{i}_{name}", value=math.log(start.loc[s, name]), min=math.log(lo), max=math.log(hi))
            lower.append(math.log(lo))
            upper.append(math.log(hi))
    lower, upper = np.array(lower), np.array(upper)
    n_obs = len(problem.obs)

    def residual_of(x: np.ndarray) -> np.ndarray:
        try:
            pred = problem.predictions(problem.matrix(x.reshape(N, k)))
        except SolverError:
            return np.full(n_obs, PENALTY)
        r = problem.residuals(pred)
        return np.where(np.isfinite(r), r, PENALTY)

    def residual(pars):
        return residual_of(np.array([pars[f"p{i}_{n}"].value for i in range(N) for n in problem.estimated]))

    def jacobian(pars, *args, **kwargs):
        """Forward differences, one parameter of every subject at a time: residuals of a
        subject depend only on its own parameters (k solves, whatever N)."""
        x = np.array([pars[f"p{i}_{n}"].value for i in range(N) for n in problem.estimated])
        r0 = residual_of(x)
        J = sparse.lil_matrix((n_obs, N * k))
        rows = np.arange(n_obs)
        for g in range(k):
            cols = np.arange(N) * k + g
            h = step * np.maximum(1.0, np.abs(x[cols]))
            h = np.where(x[cols] + h > upper[cols], -h, h)  # step back at the upper bound
            xg = x.copy()
            xg[cols] += h
            data = (residual_of(xg) - r0) / h[problem.s_index]
            J[rows, problem.s_index * k + g] = data
        return aslinearoperator(J.tocsr())

    minimizer = _SparseJacobianMinimizer(residual, params, scale_covar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = minimizer.minimize(method="least_squares", jac=jacobian, tr_solver="lsmr",
                                 max_nfev=max_nfev)
    x = np.array([out.params[f"p{i}_{n}"].value for i in range(N) for n in problem.estimated]).reshape(N, k)
    try:
        pred = problem.predictions(problem.matrix(x))
    except SolverError:
        pred = np.full(n_obs, np.nan)
    return {"problem": problem, "out": out, "x": x, "pred": pred}


class _SparseJacobianMinimizer(lmfit.Minimizer):
    """lmfit Minimizer that hands a user's Jacobian operator to scipy unchanged.

    lmfit 1.3 coerces a Jacobian to a dense float array before scipy sees it, and its
    covariance step cannot multiply scipy's sparse arrays; a LinearOperator passes both (with
    least_squares there is no bounds transformation to apply to the Jacobian)."""

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
        problem, out, x, pred = result["problem"], result["out"], result["x"], result["pred"]
        contributions = problem.minus_two_log_lik(pred) if np.all(np.isfinite(pred)) else np.full(len(pred), np.nan)
        covar = getattr(out, "covar", None)
        order = {s: i for i, s in enumerate(subjects)}
        for j, s in enumerate(problem.subjects):
            i = order[s]
            mine = problem.s_index == j
            est[i] = np.exp(x[j])
            n_obs[i] = int(mine.sum())
            n_blq[i] = int((problem.censored[mine] != 0).sum())
            ofv[i] = float(np.sum(contributions[mine]))
            if covar is not None and covar.shape == (x.size, x.size):
                block = covar[j * K:(j + 1) * K, j * K:(j + 1) * K]
                se_log = np.sqrt(np.clip(np.diag(block), 0, None))
                se[i] = est[i] * se_log  # delta method from the log scale
            at_bound = _at_bounds(model, estimate, est[i])
            ok = bool(out.success) and np.isfinite(ofv[i]) and not at_bound
            converged[i] = ok
            if not ok:
                reason[i] = ("optimiser did not converge: " + str(out.message) if not out.success else
                             f"estimate at a bound: {', '.join(at_bound)}" if at_bound else
                             "objective is not finite at the estimate")
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
