"""Compiled (numba) forms of a Model for the sampler's inner loop, with exact derivatives.

From the model's sympy expressions pkpd writes scalar Python source (common subexpressions
eliminated) for the right-hand side, its Jacobians with respect to states and parameters, the
initial states and their parameter derivatives, and every observation function with its
derivatives; numba compiles it (cached on disk by the model's hash). The same expressions give
the numpy forms of `pkpd.models.codegen`, so nothing is written twice.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from .model import Model
from .spec import COVARIATES

_HEADER = "import math\nimport numba\nimport numpy as np\n\n"

# Fixed-step RK4 over each subject, with forward sensitivities dS/dt = Jy S + Jp (S = dy/dtheta
# for the parameters in `est`), stepping exactly onto every observation time. Appended to each
# model's generated module so that numba compiles it against that model's functions.
_KERNEL = """
@numba.njit(cache=True, error_model="numpy", inline="always")
def _derivs(t, y, S, p, c, est, f, dS, Jy, Jp):
    rhs(t, y, p, c, f)
    K = est.shape[0]
    if K > 0:
        jac_y(t, y, p, c, Jy)
        jac_p(t, y, p, c, Jp)
        n = y.shape[0]
        for i in range(n):
            for k in range(K):
                acc = Jp[i, est[k]]
                for m in range(n):
                    acc += Jy[i, m] * S[m, k]
                dS[i, k] = acc


@numba.njit(cache=True, error_model="numpy")
def predict_all(P, C, est, obs_subject_start, obs_time, obs_analyte, dt_early, dt_late, t_switch,
                n_states, pred, dpred):
    N = P.shape[0]
    n_par = P.shape[1]
    n = n_states
    K = est.shape[0]
    y = np.zeros(n); S = np.zeros((n, K))
    yt = np.zeros(n); St = np.zeros((n, K))
    f1 = np.zeros(n); f2 = np.zeros(n); f3 = np.zeros(n); f4 = np.zeros(n)
    s1 = np.zeros((n, K)); s2 = np.zeros((n, K)); s3 = np.zeros((n, K)); s4 = np.zeros((n, K))
    Jy = np.zeros((n, n)); Jp = np.zeros((n, n_par)); J0 = np.zeros((n, n_par))
    g = np.zeros(1); gy = np.zeros(n); gp = np.zeros(n_par)
    for i in range(N):
        p = P[i]
        c = C[i]
        init(p, c, y)
        init_p(p, c, J0)
        for a in range(n):
            for k in range(K):
                S[a, k] = J0[a, est[k]]
        t = 0.0
        for j in range(obs_subject_start[i], obs_subject_start[i + 1]):
            target = obs_time[j]
            a = obs_analyte[j]
            if target < 0.0:  # before the infusion: the pre-infusion baseline
                base(a, target, p, c, g)
                pred[j] = g[0]
                if K > 0:
                    base_p(a, target, p, c, gp)
                    for k in range(K):
                        dpred[j, k] = gp[est[k]]
                continue
            while n > 0 and t < target - 1e-12:
                h = dt_early if t < t_switch - 1e-12 else dt_late
                if t < t_switch - 1e-12 and t + h > t_switch:
                    h = t_switch - t
                if t + h > target:
                    h = target - t
                _derivs(t, y, S, p, c, est, f1, s1, Jy, Jp)
                for a2 in range(n):
                    yt[a2] = y[a2] + 0.5 * h * f1[a2]
                    for k in range(K):
                        St[a2, k] = S[a2, k] + 0.5 * h * s1[a2, k]
                _derivs(t + 0.5 * h, yt, St, p, c, est, f2, s2, Jy, Jp)
                for a2 in range(n):
                    yt[a2] = y[a2] + 0.5 * h * f2[a2]
                    for k in range(K):
                        St[a2, k] = S[a2, k] + 0.5 * h * s2[a2, k]
                _derivs(t + 0.5 * h, yt, St, p, c, est, f3, s3, Jy, Jp)
                for a2 in range(n):
                    yt[a2] = y[a2] + h * f3[a2]
                    for k in range(K):
                        St[a2, k] = S[a2, k] + h * s3[a2, k]
                _derivs(t + h, yt, St, p, c, est, f4, s4, Jy, Jp)
                for a2 in range(n):
                    y[a2] += h / 6.0 * (f1[a2] + 2.0 * f2[a2] + 2.0 * f3[a2] + f4[a2])
                    for k in range(K):
                        S[a2, k] += h / 6.0 * (s1[a2, k] + 2.0 * s2[a2, k] + 2.0 * s3[a2, k] + s4[a2, k])
                t += h
            obs(a, target, y, p, c, g)
            pred[j] = g[0]
            if K > 0:
                obs_y(a, target, y, p, c, gy)
                obs_p(a, target, y, p, c, gp)
                for k in range(K):
                    acc = gp[est[k]]
                    for m in range(n):
                        acc += gy[m] * S[m, k]
                    dpred[j, k] = acc
"""


class _Printer(PythonCodePrinter):
    def _print_Piecewise(self, expr):  # nested conditional expressions, numba-friendly
        *pairs, (last, _) = expr.args
        out = f"({self._print(last)})"
        for value, cond in reversed(pairs):
            out = f"(({self._print(value)}) if ({self._print(cond)}) else {out})"
        return out


def _cache_dir() -> Path:
    root = Path(os.environ.get("PKPD_CACHE", Path.home() / ".cache" / "pkpd")) / "compiled"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _body(assignments: list[tuple[str, sp.Expr]], names: dict, printer: _Printer,
          zero_first: bool) -> list[str]:
    """Lines computing each target from shared subexpressions.

    Structurally zero entries are not written: callers own a buffer per function and zero it
    once, or (zero_first) the function clears its output, for buffers shared between functions."""
    targets = [(t, e) for t, e in assignments if e != 0]
    head = ["    out[:] = 0.0"] if zero_first else []
    if not targets:
        return head or ["    pass"]
    subs, reduced = sp.cse([e for _, e in targets], symbols=sp.numbered_symbols("_x"))
    lines = []
    for sym, expr in subs:
        lines.append(f"    {sym} = {printer.doprint(expr.xreplace(names))}")
    for (target, _), expr in zip(targets, reduced):
        lines.append(f"    {target} = {printer.doprint(expr.xreplace(names))}")
    return head + lines


def _source(model: Model) -> str:
    s = model.symbols
    printer = _Printer({"fully_qualified_modules": True, "standard": "python3"})
    t = s["t"]
    states = list(s["states"].values())
    params = [s["params"][n] for n in model.parameter_names]
    covs = [s["covariates"][n] for n in COVARIATES]
    # symbols -> array reads inside the generated functions
    names = {t: sp.Symbol("t")}
    names.update({y: sp.Symbol(f"y[{i}]") for i, y in enumerate(states)})
    names.update({p: sp.Symbol(f"p[{i}]") for i, p in enumerate(params)})
    names.update({c: sp.Symbol(f"c[{i}]") for i, c in enumerate(covs)})
    n, P = len(states), len(params)

    def fn(name, args, assignments, zero_first=False):
        return ["@numba.njit(cache=True, error_model=\"numpy\", inline=\"always\")", f"def {name}({args}):",
                *_body(assignments, names, printer, zero_first), ""]

    src = [_HEADER]
    src += fn("rhs", "t, y, p, c, out", [(f"out[{i}]", e) for i, e in enumerate(s["rhs"])])
    src += fn("jac_y", "t, y, p, c, out",
              [(f"out[{i}, {k}]", sp.diff(e, states[k])) for i, e in enumerate(s["rhs"]) for k in range(n)])
    src += fn("jac_p", "t, y, p, c, out",
              [(f"out[{i}, {k}]", sp.diff(e, params[k])) for i, e in enumerate(s["rhs"]) for k in range(P)])
    # the state vector is reused from subject to subject: clear it
    src += fn("init", "p, c, out", [(f"out[{i}]", e) for i, e in enumerate(s["initial"])], zero_first=True)
    src += fn("init_p", "p, c, out",
              [(f"out[{i}, {k}]", sp.diff(e, params[k])) for i, e in enumerate(s["initial"]) for k in range(P)])
    for a, analyte in enumerate(model.analytes):
        g = s["observe"][analyte]
        b = s["baseline_observe"][analyte]
        # the kernel shares one output buffer between analytes: clear it first
        src += fn(f"obs_{a}", "t, y, p, c, out", [("out[0]", g)], zero_first=True)
        src += fn(f"obs_{a}_y", "t, y, p, c, out", [(f"out[{k}]", sp.diff(g, states[k])) for k in range(n)], True)
        src += fn(f"obs_{a}_p", "t, y, p, c, out", [(f"out[{k}]", sp.diff(g, params[k])) for k in range(P)], True)
        src += fn(f"base_{a}", "t, p, c, out", [("out[0]", b)], zero_first=True)
        src += fn(f"base_{a}_p", "t, p, c, out", [(f"out[{k}]", sp.diff(b, params[k])) for k in range(P)], True)
    # one dispatcher per kind, by analyte index (numba cannot index a tuple of functions)
    for kind, args in (("obs", "t, y, p, c, out"), ("obs_y", "t, y, p, c, out"), ("obs_p", "t, y, p, c, out"),
                       ("base", "t, p, c, out"), ("base_p", "t, p, c, out")):
        src += ["@numba.njit(cache=True, error_model=\"numpy\", inline=\"always\")", f"def {kind}(a, {args}):"]
        for a in range(len(model.analytes)):
            name = kind.replace("obs", f"obs_{a}").replace("base", f"base_{a}")
            src += [f"    {'if' if a == 0 else 'elif'} a == {a}:", f"        {name}({args})"]
        src += [""]
    src += [_KERNEL]
    return "\n".join(src)


@lru_cache(maxsize=32)
def compiled_functions(model: Model):
    """The module of numba functions for `model` (generated once, cached on disk)."""
    source = _source(model)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    path = _cache_dir() / f"pkpd_{digest}.py"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    name = f"pkpd_compiled_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
