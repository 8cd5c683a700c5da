"""Solve a model for many subjects at once: one stacked ODE system, or closed forms.

All subjects are integrated together as one stacked system, with an adaptive solver (LSODA
by default, switching between stiff and non-stiff methods) and the exact block-diagonal
Jacobian generated from the model's expressions, so there is no Python loop over subjects.
Closed-form states are evaluated directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
from scipy.integrate import odeint, solve_ivp

from ..models import Model, numpy_functions
from ..models.spec import COVARIATES


class SolverError(RuntimeError):
    """The ODE solver failed; the message says for which model and why."""


@dataclass(frozen=True)
class Solution:
    """Predicted analytes on a time grid: `values[analyte]` has shape (len(times), N)."""

    times: np.ndarray
    values: dict


def covariate_matrix(n: int, **values) -> np.ndarray:
    """(n_covariates, n) array in pkpd.models.COVARIATES order; unknown names are an error."""
    unknown = sorted(set(values) - set(COVARIATES))
    if unknown:
        raise ValueError(f"unknown covariate(s) {', '.join(unknown)}; models know {', '.join(COVARIATES)}")
    out = np.zeros((len(COVARIATES), n))
    for i, name in enumerate(COVARIATES):
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


def solve_states(model: Model, times: np.ndarray, P: np.ndarray, C: np.ndarray, *,
                 method: str = "LSODA", rtol: float = 1e-8, atol: float = 1e-12) -> np.ndarray:
    """ODE states at `times` (sorted, >= 0): array (len(times), n_states, N).

    method: 'LSODA' (default; scipy.integrate.odeint, stiff/non-stiff switching, with the exact
    banded Jacobian of the subject-major stacked system) or any solve_ivp method ('BDF',
    'Radau', 'DOP853', ...)."""
    f = numpy_functions(model)
    n_states, N = f.n_states, P.shape[1]
    y0 = f.initial(P, C)
    if n_states == 0:
        return np.empty((len(times), 0, N))
    if method == "LSODA":
        return _solve_lsoda(f, times, y0, P, C, rtol, atol, model.name)
    rows, cols = _jacobian_pattern(n_states, N)

    def rhs(t, y):
        return f.rhs(t, y.reshape(n_states, N), P, C).ravel()

    def jac(t, y):
        blocks = f.jacobian(t, y.reshape(n_states, N), P, C)  # (n, n, N)
        return sparse.csc_matrix((blocks.ravel(), (rows, cols)), shape=(n_states * N,) * 2)

    t_end = float(times[-1]) if len(times) else 0.0
    if t_end <= 0:
        return np.repeat(y0[None], len(times), axis=0)
    options = {"jac": jac} if method in ("BDF", "Radau") else {}
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        result = solve_ivp(rhs, (0.0, t_end), y0.ravel(), method=method, t_eval=times, rtol=rtol,
                           atol=atol, **options)
    if not result.success:
        raise SolverError(f"model {model.name}: the ODE solver failed ({result.message})")
    if not np.all(np.isfinite(result.y)):
        raise SolverError(f"model {model.name}: the ODE solution is not finite (check parameters)")
    return result.y.T.reshape(len(times), n_states, N)


def _solve_lsoda(f, times, y0, P, C, rtol, atol, name) -> np.ndarray:
    """odeint (LSODA) on the subject-major layout y[j*n + i], whose Jacobian is banded (each
    subject's n x n block on the diagonal), so LSODA factorises it in O(N n^3)."""
    n, N = y0.shape
    band = n - 1
    i, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    band_rows = np.repeat((i - k + band).ravel()[:, None], N, axis=1)
    band_cols = (np.arange(N)[None, :] * n + k.ravel()[:, None])

    def rhs(y, t):
        return f.rhs(t, y.reshape(N, n).T, P, C).T.ravel()

    def jac(y, t):
        J = f.jacobian(t, y.reshape(N, n).T, P, C).reshape(n * n, N)
        out = np.zeros((2 * band + 1, N * n))
        out[band_rows, band_cols] = J
        return out

    grid = np.asarray(times, float)
    start = grid[0] > 0
    if start:
        grid = np.concatenate([[0.0], grid])
    if len(grid) == 1:
        return y0[None]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        y, info = odeint(rhs, y0.T.ravel(), grid, Dfun=jac, ml=band, mu=band, rtol=rtol, atol=atol,
                         mxstep=100_000, full_output=True)
    if info["message"] != "Integration successful." or not np.all(np.isfinite(y)):
        raise SolverError(f"model {name}: the ODE solver failed ({info['message']})")
    y = y[1:] if start else y
    return y.reshape(len(times), N, n).transpose(0, 2, 1)


def _jacobian_pattern(n: int, N: int):
    # entry (i, k) of subject j sits at row i*N + j, column k*N + j
    i, k, j = np.meshgrid(np.arange(n), np.arange(n), np.arange(N), indexing="ij")
    return (i * N + j).ravel(), (k * N + j).ravel()


def solve(model: Model, times, P: np.ndarray, C: np.ndarray, analytes=None, **solver) -> Solution:
    """Predicted analytes for N subjects on a common time grid (negative times: before the
    infusion, i.e. the pre-infusion baseline)."""
    f = numpy_functions(model)
    times = np.asarray(times, float)
    analytes = list(analytes) if analytes is not None else model.analytes
    unknown = sorted(set(analytes) - set(model.analytes))
    if unknown:
        raise ValueError(f"model {model.name} does not predict {', '.join(unknown)}; it predicts "
                         f"{', '.join(model.analytes)}")
    N = P.shape[1]
    after = times >= 0
    grid = np.unique(np.concatenate([[0.0], times[after]]))
    Y = solve_states(model, grid, P, C, **solver)  # (T, n, N)
    index = np.searchsorted(grid, times[after])
    values = {}
    for analyte in analytes:
        out = np.empty((len(times), N))
        if after.any():
            tt = times[after][:, None]
            ys = np.moveaxis(Y[index], 1, 0)  # (n, T_after, N)
            out[after] = f.observe[analyte](tt, ys, P[:, None, :], C[:, None, :])
        if (~after).any():
            out[~after] = f.baseline[analyte](times[~after][:, None], P[:, None, :], C[:, None, :])
        values[analyte] = out
    return Solution(times, values)
