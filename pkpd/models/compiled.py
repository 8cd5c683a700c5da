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

import numpy as np
import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from .model import Model
from .spec import COVARIATES

_HEADER = "import math\nimport numba\nimport numpy as np\n\nfrom pkpd.models._stack import stack_zeros as _zeros\n\n"

# The kernels below run without numba's reference counting (atomic increments and decrements
# around every inlined helper call with array arguments: 2x a closed-form record's cost, 1.5x an
# ODE step's); their scratch arrays are on the stack (`_stack.stack_zeros`, at most a few kB),
# which also tells LLVM that they do not alias.
# Two solvers, appended to each model's generated module so that numba compiles them against that
# model's functions. `predict_all`: fixed-step RK4 over each subject, with forward sensitivities
# dS/dt = Jy S + Jp (S = dy/dtheta for the parameters in `est`), stepping exactly onto every
# observation time. `predict_all_<pair>` (below): adaptive embedded pairs, same sensitivities.
_KERNEL = """
@numba.njit(cache=True, error_model="numpy", inline="always")
def _derivs(t, y, S, p, c, est, f, dS, Jp):
    if est.shape[0] > 0:
        rhs_sens(t, y, S, p, c, est, f, dS, Jp)
    else:
        rhs(t, y, p, c, f)


@numba.njit(cache=True, error_model="numpy", inline="always")
def _start(p, c, est, y, S, J0):
    # A subject's initial states and their sensitivities to the estimated parameters.
    init(p, c, y)
    init_p(p, c, J0)
    for a in range(y.shape[0]):
        for k in range(est.shape[0]):
            S[a, k] = J0[a, est[k]]


@numba.njit(cache=True, error_model="numpy", inline="always")
def _record_baseline(j, a, t, p, c, est, g, gp, pred, dpred):
    # A record before the infusion: the pre-infusion baseline and its derivatives.
    base(a, t, p, c, g)
    pred[j] = g[0]
    if est.shape[0] > 0:
        base_p(a, t, p, c, gp)
        for k in range(est.shape[0]):
            dpred[j, k] = gp[est[k]]


@numba.njit(cache=True, error_model="numpy", inline="always")
def _record(j, a, t, y, S, p, c, est, g, gy, gp, pred, dpred):
    # A record after the infusion: the observation function and its chain-rule derivatives.
    obs(a, t, y, p, c, g)
    pred[j] = g[0]
    if est.shape[0] > 0:
        obs_y(a, t, y, p, c, gy)
        obs_p(a, t, y, p, c, gp)
        for k in range(est.shape[0]):
            acc = gp[est[k]]
            for m in range(y.shape[0]):
                acc += gy[m] * S[m, k]
            dpred[j, k] = acc


@numba.njit(cache=True, error_model="numpy", _nrt=False)
def _closed_all(P, C, est, obs_subject_start, obs_time, obs_analyte, pred, dpred, g, gp, y):
    # A model of closed forms only: each record is its observation function, nothing to step
    # (the solvers' per-record bookkeeping would double its cost). Like the kernels, compiled
    # without reference counting: its increments and decrements around each record's inlined
    # call with array arguments cost 2x the record's arithmetic (measured on multiphasic).
    K = est.shape[0]
    for i in range(P.shape[0]):
        p = P[i]
        c = C[i]
        for j in range(obs_subject_start[i], obs_subject_start[i + 1]):
            t = obs_time[j]
            a = obs_analyte[j]
            if t < 0.0:
                base(a, t, p, c, g)
                if K > 0:
                    base_p(a, t, p, c, gp)
            elif K > 0:
                obs_vp(a, t, y, p, c, g, gp)
            else:
                obs(a, t, y, p, c, g)
            pred[j] = g[0]
            for k in range(K):
                dpred[j, k] = gp[est[k]]


@numba.njit(cache=True, error_model="numpy", _nrt=False)
def predict_all(P, C, est, obs_subject_start, obs_time, obs_analyte, dt_early, dt_late, t_switch,
                n_states, pred, dpred):
    if n_states == 0:
        _closed_all(P, C, est, obs_subject_start, obs_time, obs_analyte, pred, dpred, _zeros((1,)),
                    _zeros((P.shape[1],)), _zeros((0,)))
        return
    N = P.shape[0]
    n_par = P.shape[1]
    n = n_states
    K = est.shape[0]
    y = _zeros((n,)); S = _zeros((n, K))
    yt = _zeros((n,)); St = _zeros((n, K))
    f1 = _zeros((n,)); f2 = _zeros((n,)); f3 = _zeros((n,)); f4 = _zeros((n,))
    s1 = _zeros((n, K)); s2 = _zeros((n, K)); s3 = _zeros((n, K)); s4 = _zeros((n, K))
    Jp = _zeros((n, n_par)); J0 = _zeros((n, n_par))
    g = _zeros((1,)); gy = _zeros((n,)); gp = _zeros((n_par,))
    for i in range(N):
        p = P[i]
        c = C[i]
        _start(p, c, est, y, S, J0)
        t = 0.0
        for j in range(obs_subject_start[i], obs_subject_start[i + 1]):
            target = obs_time[j]
            a = obs_analyte[j]
            if target < 0.0:  # before the infusion: the pre-infusion baseline
                _record_baseline(j, a, target, p, c, est, g, gp, pred, dpred)
                continue
            while n > 0 and t < target - 1e-12:
                h = dt_early if t < t_switch - 1e-12 else dt_late
                if t < t_switch - 1e-12 and t + h > t_switch:
                    h = t_switch - t
                if t + h > target:
                    h = target - t
                _derivs(t, y, S, p, c, est, f1, s1, Jp)
                for a2 in range(n):
                    yt[a2] = y[a2] + 0.5 * h * f1[a2]
                    for k in range(K):
                        St[a2, k] = S[a2, k] + 0.5 * h * s1[a2, k]
                _derivs(t + 0.5 * h, yt, St, p, c, est, f2, s2, Jp)
                for a2 in range(n):
                    yt[a2] = y[a2] + 0.5 * h * f2[a2]
                    for k in range(K):
                        St[a2, k] = S[a2, k] + 0.5 * h * s2[a2, k]
                _derivs(t + 0.5 * h, yt, St, p, c, est, f3, s3, Jp)
                for a2 in range(n):
                    yt[a2] = y[a2] + h * f3[a2]
                    for k in range(K):
                        St[a2, k] = S[a2, k] + h * s3[a2, k]
                _derivs(t + h, yt, St, p, c, est, f4, s4, Jp)
                for a2 in range(n):
                    y[a2] += h / 6.0 * (f1[a2] + 2.0 * f2[a2] + 2.0 * f3[a2] + f4[a2])
                    for k in range(K):
                        S[a2, k] += h / 6.0 * (s1[a2, k] + 2.0 * s2[a2, k] + 2.0 * s3[a2, k] + s4[a2, k])
                t += h
            _record(j, a, target, y, S, p, c, est, g, gy, gp, pred, dpred)

"""


def _tableau(c, A, b, bhat, order, fsal):
    s = len(b)
    a = np.zeros((s, s))
    for i, row in enumerate(A, start=1):
        a[i, :len(row)] = row
    b, bhat = np.array(b, float), np.array(bhat, float)
    return a, b, b - bhat, np.array(c, float), order, fsal


# Embedded explicit Runge-Kutta pairs, kernels `predict_all_<name>`: (A, b, e = b - bhat, c, q, fsal)
# with q the order of the error estimate plus one (the controller's exponent is 1/q).
TABLEAUS = {
    "dopri5": _tableau(  # Dormand & Prince 1980, 5(4), FSAL
        [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1],
        [[1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]],
        [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
        [5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40], 5, True),
    "bs3": _tableau(  # Bogacki & Shampine 1989, 3(2), FSAL
        [0, 1 / 2, 3 / 4, 1],
        [[1 / 2], [0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
        [2 / 9, 1 / 3, 4 / 9, 0], [7 / 24, 1 / 4, 1 / 3, 1 / 8], 3, True),
    "cashkarp": _tableau(  # Cash & Karp 1990, 5(4), local extrapolation
        [0, 1 / 5, 3 / 10, 3 / 5, 1, 7 / 8],
        [[1 / 5], [3 / 40, 9 / 40], [3 / 10, -9 / 10, 6 / 5], [-11 / 54, 5 / 2, -70 / 27, 35 / 27],
         [1631 / 55296, 175 / 512, 575 / 13824, 44275 / 110592, 253 / 4096]],
        [37 / 378, 0, 250 / 621, 125 / 594, 0, 512 / 1771],
        [2825 / 27648, 0, 18575 / 48384, 13525 / 55296, 277 / 14336, 1 / 4], 5, False),
}


# Adaptive explicit embedded Runge-Kutta over each subject (one kernel per pair, its tableau written
# into the code by `_adaptive_source`), with the forward sensitivities carried along the same
# accepted steps. Error control on the states (optionally also on S, where an error below
# rtol in d log y / d log theta also passes) in the max norm, each
# component scaled by rtol*max(|y|, |y_new|) + atol*peak (peak: the largest |y| of that state so
# far on the subject's path), so small states (B cells in aplasia) keep relative accuracy down to
# atol/rtol of their peak. PI step-size controller, Hairer's initial step guess, steps at most
# h_max long and clipped to land exactly on every observation time. A subject needing more than
# max_steps step attempts (or a step below 1e-12 d) gets NaN predictions and derivatives from that
# record on, instead of looping forever. n_steps[i] += accepted steps of subject i.
_ADAPTIVE = """
@numba.njit(cache=True, error_model="numpy", _nrt=False)
def predict_all_@NAME@(P, C, est, obs_subject_start, obs_time, obs_analyte, rtol, atol, h_max,
                       max_steps, control_sens, n_states, pred, dpred, n_steps):
    if n_states == 0:
        _closed_all(P, C, est, obs_subject_start, obs_time, obs_analyte, pred, dpred, _zeros((1,)),
                    _zeros((P.shape[1],)), _zeros((0,)))
        return
    N = P.shape[0]
    n_par = P.shape[1]
    n = n_states
    K = est.shape[0]
    y = _zeros((n,)); S = _zeros((n, K))
    yt = _zeros((n,)); St = _zeros((n, K))
    yn = _zeros((n,)); Sn = _zeros((n, K))
    peak = _zeros((n,)); speak = _zeros((n, K))
@ALLOC@
    f0 = _zeros((n,)); f1 = _zeros((n,))
    Jp = _zeros((n, n_par)); J0 = _zeros((n, n_par))
    g = _zeros((1,)); gy = _zeros((n,)); gp = _zeros((n_par,))
    order = @ORDER@
    alpha = 0.7 / order  # PI controller (Gustafsson; Hairer & Wanner II, IV.2)
    beta = 0.4 / order
    for i in range(N):
        p = P[i]
        c = C[i]
        _start(p, c, est, y, S, J0)
        for a in range(n):
            peak[a] = abs(y[a])
            for q in range(K):
                speak[a, q] = abs(S[a, q])
        t = 0.0
        h = 0.0  # 0: not chosen yet
        err_old = 1e-4
        have_k0 = False
        rejected = False
        failed = False
        attempts = 0
        for j in range(obs_subject_start[i], obs_subject_start[i + 1]):
            target = obs_time[j]
            a = obs_analyte[j]
            if target < 0.0:  # before the infusion: the pre-infusion baseline
                _record_baseline(j, a, target, p, c, est, g, gp, pred, dpred)
                continue
            while n > 0 and not failed and t < target - 1e-12:
                if not have_k0:
                    _derivs(t, y, S, p, c, est, k0, kS0, Jp)
                    have_k0 = True
                if h == 0.0:  # initial step (Hairer, Norsett & Wanner I, II.4)
                    d0 = 0.0
                    d1 = 0.0
                    for m in range(n):
                        sc = atol * peak[m] + rtol * abs(y[m])
                        if sc > 0.0:
                            d0 = max(d0, abs(y[m]) / sc)
                            d1 = max(d1, abs(k0[m]) / sc)
                    h0 = 0.01 * d0 / d1 if (d0 > 1e-5 and d1 > 1e-5) else 1e-6
                    for m in range(n):
                        f0[m] = y[m] + h0 * k0[m]
                    rhs(t + h0, f0, p, c, f1)
                    d2 = 0.0
                    for m in range(n):
                        sc = atol * peak[m] + rtol * abs(y[m])
                        if sc > 0.0:
                            d2 = max(d2, abs(f1[m] - k0[m]) / sc / h0)
                    dm = max(d1, d2)
                    h1 = (0.01 / dm) ** (1.0 / order) if dm > 1e-15 else max(1e-6, h0 * 1e-3)
                    h = min(100.0 * h0, h1, h_max)
                    if not (h > 0.0):
                        h = 1e-6
                attempts += 1
                if attempts > max_steps or h < 1e-12:
                    failed = True
                    break
                h_free = h
                landing = False
                if t + 1.01 * h >= target:
                    h = target - t
                    landing = True
@STAGES@
                err = 0.0
                for m in range(n):
                    sc = rtol * max(abs(y[m]), abs(yn[m])) + atol * max(peak[m], abs(yn[m]))
                    ea = abs(yt[m])
                    if not (yn[m] == yn[m]) or not (ea == ea):
                        err = math.inf
                    elif ea > 0.0:
                        err = max(err, ea / sc) if sc > 0.0 else math.inf
                    if control_sens:  # on S and on the log-log sensitivity theta/y * S
                        for q in range(K):
                            th = abs(p[est[q]])
                            th = 1.0 / th if th > 0.0 else 1.0
                            sc = (rtol * (max(abs(S[m, q]), abs(Sn[m, q])) + th * abs(yn[m]))
                                  + atol * (max(speak[m, q], abs(Sn[m, q])) + th * peak[m]))
                            ea = abs(St[m, q])
                            if not (ea == ea):
                                err = math.inf
                            elif ea > 0.0:
                                err = max(err, ea / sc) if sc > 0.0 else math.inf
                if err <= 1.0:
                    t = target if landing else t + h
                    for m in range(n):
                        y[m] = yn[m]
                        peak[m] = max(peak[m], abs(y[m]))
                        for q in range(K):
                            S[m, q] = Sn[m, q]
                            speak[m, q] = max(speak[m, q], abs(S[m, q]))
@ACCEPT@
                    fac = 0.9 * max(err, 1e-10) ** (-alpha) * err_old ** beta
                    fac = min(10.0, max(0.2, fac))
                    if rejected:
                        fac = min(fac, 1.0)
                    err_old = max(err, 1e-4)
                    h_next = h * fac
                    if landing:  # the clipped step says little about the next one
                        h_next = max(h_next, h_free)
                    h = min(h_next, h_max)
                    rejected = False
                    n_steps[i] += 1
                else:
                    fac = 0.9 * err ** (-1.0 / order) if err < math.inf else 0.2
                    h = h * min(1.0, max(0.2, fac))
                    rejected = True
            if failed:
                pred[j] = np.nan
                for q in range(K):
                    dpred[j, q] = np.nan
                continue
            _record(j, a, target, y, S, p, c, est, g, gy, gp, pred, dpred)
"""


def _combination(target: str, base: str | None, weights, vector: str, indent: str) -> list[str]:
    """`target = base + h*sum(w_r * vector_r)` for one component, zero weights left out."""
    terms = [f"{float(w)!r} * {vector.format(r=r)}" for r, w in enumerate(weights) if w != 0.0]
    total = " + ".join(terms) if terms else "0.0"
    return [f"{indent}{target} = " + (f"{base} + " if base else "") + f"h * ({total})"]


def _adaptive_source(method: str) -> str:
    """The kernel `predict_all_<method>` for one embedded pair of TABLEAUS, its stages unrolled."""
    A, b, e, c, order, fsal = TABLEAUS[method]
    ns = len(b)
    alloc = [f"    k{r} = _zeros((n,)); kS{r} = _zeros((n, K))" for r in range(ns)]
    stages = ["                # stages 1..ns-1 (stage 0: f at (t, y), kept from the last step)"]
    for s in range(1, ns):
        stages += ["                for m in range(n):"]
        stages += _combination("yt[m]", "y[m]", A[s, :s], "k{r}[m]", " " * 20)
        stages += ["                    for q in range(K):"]
        stages += _combination("St[m, q]", "S[m, q]", A[s, :s], "kS{r}[m, q]", " " * 24)
        stages += [f"                _derivs(t + {float(c[s])!r} * h, yt, St, p, c, est, k{s}, kS{s}, Jp)"]
    stages += ["                # new solution (yn, Sn) and its error estimate (yt, St)",
               "                for m in range(n):"]
    stages += _combination("yn[m]", "y[m]", b, "k{r}[m]", " " * 20)
    stages += _combination("yt[m]", None, e, "k{r}[m]", " " * 20)
    stages += ["                    for q in range(K):"]
    stages += _combination("Sn[m, q]", "S[m, q]", b, "kS{r}[m, q]", " " * 24)
    stages += _combination("St[m, q]", None, e, "kS{r}[m, q]", " " * 24)
    if fsal:  # the last stage is f at the new point: the next step's first
        accept = [f"                    k0, k{ns - 1} = k{ns - 1}, k0",
                  f"                    kS0, kS{ns - 1} = kS{ns - 1}, kS0"]
    else:
        accept = ["                    have_k0 = False"]
    return (_ADAPTIVE.replace("@NAME@", method).replace("@ORDER@", repr(float(order)))
            .replace("@ALLOC@", "\n".join(alloc)).replace("@STAGES@", "\n".join(stages))
            .replace("@ACCEPT@", "\n".join(accept)))


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
          zero_first: bool | tuple[str, ...]) -> list[str]:
    """Lines computing each target from shared subexpressions.

    Structurally zero entries are not written: callers own a buffer per function and zero it
    once, or (zero_first) the function clears its output buffers (True: `out`; or the names
    given), for buffers shared between functions."""
    targets = [(t, e) for t, e in assignments if e != 0]
    head = [f"    {b}[:] = 0.0" for b in (("out",) if zero_first is True else zero_first or ())]
    if not targets:
        return head or ["    pass"]
    subs, reduced = sp.cse([e for _, e in targets], symbols=sp.numbered_symbols("_x"))
    lines = []
    for sym, expr in subs:
        lines.append(f"    {sym} = {printer.doprint(expr.xreplace(names))}")
    for (target, _), expr in zip(targets, reduced):
        lines.append(f"    {target} = {printer.doprint(expr.xreplace(names))}")
    return head + lines


def _sensitivity_function(rhs: list, states: list, params: list, names: dict, printer) -> list[str]:
    """`rhs_sens`: the right-hand side f and the forward sensitivities dS = (df/dy) S + df/dtheta
    in one body, sharing subexpressions, the state Jacobian's structural zeros left out.

    df/dtheta goes to the caller's buffer Jp (n, n_parameters), zero except where written, and is
    read at the estimated columns `est`; the nonzero df/dy entries stay local scalars."""
    n = len(states)
    assignments = [(f"f[{i}]", e) for i, e in enumerate(rhs)]
    terms: list[list[tuple[str, int]]] = [[] for _ in range(n)]
    for i, e in enumerate(rhs):
        for m, y in enumerate(states):
            d = sp.diff(e, y)
            if d != 0:
                assignments.append((f"_jy_{i}_{m}", d))
                terms[i].append((f"_jy_{i}_{m}", m))
    assignments += [(f"Jp[{i}, {k}]", sp.diff(e, q)) for i, e in enumerate(rhs) for k, q in enumerate(params)]
    lines = ["@numba.njit(cache=True, error_model=\"numpy\", inline=\"always\")",
             "def rhs_sens(t, y, S, p, c, est, f, dS, Jp):",
             *_body(assignments, names, printer, zero_first=False),
             "    for k in range(est.shape[0]):", "        e = est[k]"]
    for i in range(n):
        products = "".join(f" + {name} * S[{m}, k]" for name, m in terms[i])
        lines.append(f"        dS[{i}, k] = Jp[{i}, e]{products}")
    return lines + [""]


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
    src += _sensitivity_function(s["rhs"], states, params, names, printer)
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
        # value and parameter derivatives together: one set of common subexpressions (closed forms)
        src += fn(f"obs_{a}_vp", "t, y, p, c, out, out_p",
                  [("out[0]", g)] + [(f"out_p[{k}]", sp.diff(g, params[k])) for k in range(P)], ("out", "out_p"))
        src += fn(f"base_{a}", "t, p, c, out", [("out[0]", b)], zero_first=True)
        src += fn(f"base_{a}_p", "t, p, c, out", [(f"out[{k}]", sp.diff(b, params[k])) for k in range(P)], True)
    # one dispatcher per kind, by analyte index (numba cannot index a tuple of functions)
    for kind, args in (("obs", "t, y, p, c, out"), ("obs_y", "t, y, p, c, out"), ("obs_p", "t, y, p, c, out"),
                       ("obs_vp", "t, y, p, c, out, out_p"), ("base", "t, p, c, out"), ("base_p", "t, p, c, out")):
        src += ["@numba.njit(cache=True, error_model=\"numpy\", inline=\"always\")", f"def {kind}(a, {args}):"]
        for a in range(len(model.analytes)):
            name = kind.replace("obs", f"obs_{a}").replace("base", f"base_{a}")
            src += [f"    {'if' if a == 0 else 'elif'} a == {a}:", f"        {name}({args})"]
        src += [""]
    src += [_KERNEL] + [_adaptive_source(method) for method in TABLEAUS]
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
