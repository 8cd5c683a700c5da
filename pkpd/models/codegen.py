"""Executable numpy forms of a Model, generated from its sympy expressions.

Every function is vectorised over subjects: parameters and covariates are arrays of shape
(N,) (or anything that broadcasts), states arrays of shape (n_states, N); covariates in the
order of model.covariate_names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import sympy as sp

from .model import Model


def _lambdify(args, exprs, cse=True):
    return sp.lambdify(args, exprs, modules=["numpy"], cse=cse)


@dataclass(frozen=True)
class NumpyModel:
    """numpy callables of one Model; see `numpy_functions`."""

    model: Model
    rhs: Callable  # (t, Y, P, C) -> (n_states, N)
    jacobian: Callable  # (t, Y, P, C) -> (n_states, n_states, N)   d rhs / d y
    initial: Callable  # (P, C) -> (n_states, N)
    closed: dict  # state -> (t, P, C) -> values
    observe: dict  # analyte -> (t, Y, P, C) -> values
    baseline: dict  # analyte -> (P, C) -> values before the first dose
    bioavailability: list  # per dosing target: (P, C) -> F
    lag: list  # per dosing target: (P, C) -> lag time

    @property
    def n_states(self) -> int:
        return len(self.model.states)


# Piecewise expressions evaluate every branch; an unused branch may overflow harmlessly
# (e.g. the expansion line long after Tmax), so overflow warnings are silenced here.
def _wrap_list(fn, n_out: int):
    def call(*args):
        with np.errstate(over="ignore"):
            out = fn(*args)
        shape = np.broadcast_shapes(*(np.shape(o) for o in out), *(np.shape(a) for a in args))
        return np.stack([np.broadcast_to(np.asarray(o, float), shape) for o in out]) if n_out else \
            np.empty((0, *shape))
    return call


def _wrap_one(fn):
    def call(*args):
        with np.errstate(over="ignore"):
            out = fn(*args)
        shape = np.broadcast_shapes(np.shape(out), *(np.shape(a) for a in args))
        return np.broadcast_to(np.asarray(out, float), shape)
    return call


@lru_cache(maxsize=64)
def numpy_functions(model: Model) -> NumpyModel:
    s = model.symbols
    t = s["t"]
    y = list(s["states"].values())
    p = [s["params"][n] for n in model.parameter_names]
    c = [s["covariates"][n] for n in model.covariate_names]
    args = [t, *y, *p, *c]
    n = len(y)

    rhs_fn = _wrap_list(_lambdify(args, s["rhs"]), n)
    jac_exprs = [sp.diff(f, yi) for f in s["rhs"] for yi in y]
    jac_fn = _wrap_list(_lambdify(args, jac_exprs), n * n)
    init_fn = _wrap_list(_lambdify([*p, *c], s["initial"]), n)

    def split(Y, P, C):
        return [*np.asarray(Y)], [*np.asarray(P)], [*np.asarray(C)]

    def rhs(tt, Y, P, C):
        ys, ps, cs = split(Y, P, C)
        return rhs_fn(tt, *ys, *ps, *cs)

    def jacobian(tt, Y, P, C):
        ys, ps, cs = split(Y, P, C)
        out = jac_fn(tt, *ys, *ps, *cs)
        return out.reshape(n, n, *out.shape[1:])

    def initial(P, C):
        return init_fn(*np.asarray(P), *np.asarray(C))

    closed = {}
    for name, expr in s["closed"].items():
        fn = _wrap_one(_lambdify([t, *p, *c], expr))
        closed[name] = lambda tt, P, C, fn=fn: fn(tt, *np.asarray(P), *np.asarray(C))
    observe, baseline = {}, {}
    for analyte, expr in s["observe"].items():
        fn = _wrap_one(_lambdify(args, expr))
        observe[analyte] = lambda tt, Y, P, C, fn=fn: fn(tt, *np.asarray(Y), *np.asarray(P), *np.asarray(C))
        bfn = _wrap_one(_lambdify([t, *p, *c], s["baseline_observe"][analyte]))
        baseline[analyte] = lambda tt, P, C, fn=bfn: fn(tt, *np.asarray(P), *np.asarray(C))
    dosing = {"bioavailability": [], "lag": []}
    for d in s["dosing"]:
        for key in dosing:
            fn = _wrap_one(_lambdify([*p, *c], d[key]))
            dosing[key].append(lambda P, C, fn=fn: fn(*np.asarray(P), *np.asarray(C)))
    return NumpyModel(model, rhs, jacobian, initial, closed, observe, baseline, dosing["bioavailability"],
                      dosing["lag"])
