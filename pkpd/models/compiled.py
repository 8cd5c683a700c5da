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
import re
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from .._cache import cache_root
from .model import Model

_HEADER = "import math\nimport numba\nimport numpy as np\n\nfrom pkpd.models._stack import stack_indices as _indices, stack_zeros as _zeros\n\n"

# The kernels below run without numba's reference counting (atomic increments and decrements
# around every inlined helper call with array arguments: 2x a closed-form record's cost, 1.5x an
# ODE step's); their scratch arrays are on the stack (`_stack.stack_zeros`, at most a few kB),
# which also tells LLVM that they do not alias.
#
# Doses are events (pkpd.simulate.events): a bolus adds F*amount to its target state, an
# infusion adds its rate to the target's derivative until it ends, a reset puts the states back
# to their initial values. Sensitivities S = dy/dtheta cross every event exactly: a bolus adds
# amount*dF/dtheta to the target's row; an event whose time tau depends on theta (a lag time, or
# the end of an infusion whose duration is F*amount/RATE) adds (f(before) - f(after))*dtau/dtheta
# (the jump of the right-hand side times the shift of the event).
_KERNEL = """
@numba.njit(cache=True, error_model="numpy", inline="always")
def _derivs(t, y, S, p, c, est, hi, f, dS, Jp, rates, drates, infusing):
    if est.shape[0] > 0:
        rhs_sens(t, y, S, p, c, est, hi, f, dS, Jp)
    else:
        rhs(t, y, p, c, f)
    if infusing:
        for m in range(y.shape[0]):
            f[m] += rates[m]
            for q in range(est.shape[0]):
                dS[m, q] += drates[m, q]


@numba.njit(cache=True, error_model="numpy", inline="always")
def _rhs_rates(t, y, p, c, f, rates, infusing):
    rhs(t, y, p, c, f)
    if infusing:
        for m in range(y.shape[0]):
            f[m] += rates[m]


@numba.njit(cache=True, error_model="numpy", inline="always")
def _start(p, c, est, y, S, J0):
    # The initial states (before any dose) and their sensitivities to the estimated parameters.
    init(p, c, y)
    init_p(p, c, J0)
    for a in range(y.shape[0]):
        for k in range(est.shape[0]):
            S[a, k] = J0[a, est[k]]


@numba.njit(cache=True, error_model="numpy", inline="always")
def _segment(seg_start, seg_time, i, t):
    # the covariate segment of subject i in force at time t
    s = seg_start[i]
    while s + 1 < seg_start[i + 1] and seg_time[s + 1] <= t:
        s += 1
    return s


@numba.njit(cache=True, error_model="numpy", inline="always")
def _record_baseline(j, a, t, p, c, est, g, gp, pred, dpred):
    # A record before the first dose: the pre-dose baseline and its derivatives.
    base(a, t, p, c, g)
    pred[j] = g[0]
    if est.shape[0] > 0:
        base_p(a, t, p, c, gp)
        for k in range(est.shape[0]):
            dpred[j, k] = gp[est[k]]


@numba.njit(cache=True, error_model="numpy", inline="always")
def _record(j, a, t, y, S, p, c, est, col, g, gy, gp, pred, dpred):
    # A record after the first dose: the observation function and its chain-rule derivatives
    # (S's column k holds the sensitivities to estimated parameter col[k]).
    obs(a, t, y, p, c, g)
    pred[j] = g[0]
    if est.shape[0] > 0:
        obs_y(a, t, y, p, c, gy)
        obs_p(a, t, y, p, c, gp)
        for k in range(est.shape[0]):
            dpred[j, k] = gp[est[k]]
        for k in range(S.shape[1]):
            acc = 0.0
            for m in range(y.shape[0]):
                acc += gy[m] * S[m, k]
            dpred[j, col[k]] += acc


@numba.njit(cache=True, error_model="numpy", inline="always")
def _dense_records(j, j_lim, t0, t1, y0, S0, f0, fS0, y1, S1, f1, fS1, hi, obs_time, obs_analyte, p, c, est, col,
                   g, gy, gp, pred, dpred, y_at, S_at):
    # The records j.. (before j_lim) that the step from t0 to t1 passes: states and sensitivities by
    # cubic Hermite interpolation from their values and derivatives at both ends of the step
    # (fourth order in the step length). Returns the next record.
    h = t1 - t0
    while j < j_lim and obs_time[j] <= t1:
        u = (obs_time[j] - t0) / h
        w = u * (u - 1.0)
        for m in range(y0.shape[0]):
            d = y1[m] - y0[m]
            y_at[m] = y0[m] + u * d + w * ((1.0 - 2.0 * u) * d + (u - 1.0) * h * f0[m] + u * h * f1[m])
            for q in range(S0.shape[1]):
                if q < hi[m]:
                    d = S1[m, q] - S0[m, q]
                    S_at[m, q] = S0[m, q] + u * d + w * ((1.0 - 2.0 * u) * d + (u - 1.0) * h * fS0[m, q]
                                                         + u * h * fS1[m, q])
                else:  # not carried along the path: constant
                    S_at[m, q] = S1[m, q]
        _record(j, obs_analyte[j], obs_time[j], y_at, S_at, p, c, est, col, g, gy, gp, pred, dpred)
        j += 1
    return j


@numba.njit(cache=True, error_model="numpy", _nrt=False)
def _closed_all(P, C, seg_start, seg_time, est, obs_subject_start, obs_time, obs_analyte, pred, dpred, g, gp, y):
    # A model of closed forms only: each record is its observation function, nothing to step
    # (the solvers' per-record bookkeeping would double its cost). Like the kernels, compiled
    # without reference counting: its increments and decrements around each record's inlined
    # call with array arguments cost 2x the record's arithmetic (measured on multiphasic).
    K = est.shape[0]
    for i in range(P.shape[0]):
        p = P[i]
        for j in range(obs_subject_start[i], obs_subject_start[i + 1]):
            t = obs_time[j]
            a = obs_analyte[j]
            c = C[_segment(seg_start, seg_time, i, t)]
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


@numba.njit(cache=True, error_model="numpy", inline="always")
def _set_rates(n_ev, inf_on, inf_target, inf_rate, inf_drate, rates, drates):
    # the summed rate of the running infusions into each state, and its sensitivities
    for m in range(rates.shape[0]):
        rates[m] = 0.0
        for q in range(drates.shape[1]):
            drates[m, q] = 0.0
    # a bool, not the literal False: typed as a literal, it reaches the integrator during type
    # inference and compiles it once more for that type (6-7 s of each kernel's compile)
    running = n_ev < 0
    for e in range(n_ev):
        if inf_on[e]:
            running = True
            k = inf_target[e]
            rates[k] += inf_rate[e]
            for q in range(drates.shape[1]):
                drates[k, q] += inf_drate[e, q]
    return running


@numba.njit(cache=True, error_model="numpy", inline="always")
def _give(t, slot, kind, k, state, amount, length, with_lag, p, c, est, y, S, f0, f1, gpar, glag,
          inf_on, inf_end, inf_target, inf_rate, inf_drate, inf_dend, rates, infusing):
    # Apply one dose to dosing target k (state index `state`) at time t; `slot` is its place
    # among the subject's infusions. with_lag: add the terms of a lag time that depends on theta.
    K = est.shape[0]
    dose_f(k, p, c, f0)
    F = f0[0]
    if K > 0:
        dose_f_p(k, p, c, gpar)
        dose_lag_p(k, p, c, glag)
    if kind == 0:  # bolus
        lagged = False
        if with_lag and K > 0:
            for q in range(K):
                if glag[est[q]] != 0.0:
                    lagged = True
        if lagged:
            _rhs_rates(t, y, p, c, f0, rates, infusing)
        y[state] += F * amount
        for q in range(K):
            S[state, q] += amount * gpar[est[q]]
        if lagged:
            _rhs_rates(t, y, p, c, f1, rates, infusing)
            for m in range(y.shape[0]):
                for q in range(K):
                    S[m, q] += (f0[m] - f1[m]) * glag[est[q]]
        return
    # infusion: F*amount over `length` (duration given), or at `length` per time unit (rate given)
    if kind == 1:
        rate = F * amount / length
        inf_end[slot] = t + length
    else:
        rate = length
        inf_end[slot] = t + F * amount / length
    inf_on[slot] = 1
    inf_target[slot] = state
    inf_rate[slot] = rate
    for q in range(K):
        dF = gpar[est[q]]
        dlag = glag[est[q]] if with_lag else 0.0
        inf_drate[slot, q] = amount / length * dF if kind == 1 else 0.0
        inf_dend[slot, q] = dlag + (amount / length * dF if kind == 2 else 0.0)
        S[state, q] -= rate * dlag  # the start moves with the lag: f jumps up by the rate
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


# Adaptive explicit embedded Runge-Kutta (one integrator and one kernel per pair, its tableau
# written into the code by `_adaptive_source`), with the forward sensitivities carried along the
# same accepted steps. Error control on the states (optionally also on S, where an error below
# rtol in d log y / d log theta also passes) in the max norm, each component scaled by
# rtol*max(|y|, |y_new|) + atol*peak (peak: the largest |y| of that state so far on the subject's
# path), so small states (B cells in aplasia) keep relative accuracy down to atol/rtol of their
# peak. PI step-size controller, Hairer's initial step guess (again after every event), steps at
# most h_max long and clipped to land exactly on every record and event (with `interpolate`: on
# every event and each subject's last record, the records between interpolated). A subject needing more
# than max_steps step attempts (or a step below 1e-12) gets NaN predictions and derivatives from
# that record on, instead of looping forever. n_steps[i] += accepted steps of subject i.
#
# `_integrate_<pair>` advances (y, S) from t to target; its controller state lives in `ctl`
# (h, err_old, have_k0, rejected, attempts, failed, accepted steps) so that it carries over
# between calls. It returns the time reached and whether the FSAL buffers k0 and k_last were
# swapped an odd number of times (the caller then swaps its names too).
_INTEGRATE = """
@numba.njit(cache=True, error_model="numpy", _nrt=False)
def _integrate@VARIANT@_@NAME@(t, target, y, S, p, c, est, hi, rtol, atol, h_max, max_steps, control_sens, ctl,
                      yt, St, yn, Sn, peak, speak, f0, f1, Jp, rates, drates, infusing,@RECPARAMS@ @KARGS@):
    n = y.shape[0]
    K = est.shape[0]
    order = @ORDER@
    alpha = 0.7 / order  # PI controller (Gustafsson; Hairer & Wanner II, IV.2)
    beta = 0.4 / order
    h = ctl[0]
    err_old = ctl[1]
    have_k0 = ctl[2] > 0.0
    rejected = ctl[3] > 0.0
    attempts = ctl[4]
    failed = ctl[5] > 0.0
    parity = False
    end = target - 1e-12 * max(1.0, abs(target))
    while not failed and t < end:
        if not have_k0:
            _derivs(t, y, S, p, c, est, hi, k0, kS0, Jp, rates, drates, infusing)
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
            _rhs_rates(t + h0, f0, p, c, f1, rates, infusing)
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
        attempts += 1.0
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
                for q in range(hi[m]):
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
            t_new = target if landing else t + h
@DENSE@
            t = t_new
            for m in range(n):
                y[m] = yn[m]
                peak[m] = max(peak[m], abs(y[m]))
                for q in range(hi[m]):
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
            ctl[6] += 1.0
        else:
            fac = 0.9 * err ** (-1.0 / order) if err < math.inf else 0.2
            h = h * min(1.0, max(0.2, fac))
            rejected = True
    ctl[0] = h
    ctl[1] = err_old
    ctl[2] = 1.0 if have_k0 else 0.0
    ctl[3] = 1.0 if rejected else 0.0
    ctl[4] = attempts
    ctl[5] = 1.0 if failed else 0.0
    return t, parity@RETURN@
"""

# `_integrate_dense_<pair>` also interpolates the records jr.. (before j_lim) that its steps pass
# (records between events, `Tolerances.interpolate`) and returns the next record as well. A
# variant of its own, in a kernel of its own (`predict_all_dense_<pair>`), so that the fits'
# kernel stays as it was: as fast, and as quick to compile.
_ADAPTIVE = """
@numba.njit(cache=True, error_model="numpy", _nrt=False, nogil=True)
def predict_all@VARIANT@_@NAME@(P, C, seg_start, seg_time, est, obs_subject_start, obs_time, obs_analyte,
                       ev_start, ev_time, ev_kind, ev_target, ev_amount, ev_length, ev_ss, dose_state,
                       rtol, atol, h_max, max_steps, control_sens, n_states, pred, dpred, n_steps,
                       ev_order, ev_tau, inf_on, inf_end, inf_target, inf_rate, inf_drate, inf_dend):
    if n_states == 0:
        _closed_all(P, C, seg_start, seg_time, est, obs_subject_start, obs_time, obs_analyte, pred, dpred,
                    _zeros((1,)), _zeros((P.shape[1],)), _zeros((0,)))
        return
    N = P.shape[0]
    n_par = P.shape[1]
    n = n_states
    # The sensitivities carried along the path: to the estimated parameters that some state
    # depends on (SENSITIVE, structural); the others (a cytokine at quasi-steady state, a scale
    # of an observation) reach the records through the observation functions alone. Columns in
    # order of how many states depend on them, so that row m's nonzero entries lie in its first
    # hi[m] columns: the loops over S skip the structural zeros and stay dense (an immunoglobulin's
    # baseline acts on one state only; the CAR-T parameters on all).
    sens_buffer = _indices((est.shape[0],))
    col = _indices((est.shape[0],))
    count = _indices((est.shape[0],))
    K = 0
    for q in range(est.shape[0]):
        rows = 0
        for m in range(n):
            if SENSITIVE[m, est[q]]:
                rows += 1
        if rows > 0:  # insert, stable, in descending order of rows
            r = K
            while r > 0 and count[r - 1] < rows:
                sens_buffer[r] = sens_buffer[r - 1]
                col[r] = col[r - 1]
                count[r] = count[r - 1]
                r -= 1
            sens_buffer[r] = est[q]
            col[r] = q
            count[r] = rows
            K += 1
    sens = sens_buffer[:K]
    hi = _indices((n,))
    for m in range(n):
        for k in range(K):
            if SENSITIVE[m, sens[k]]:
                hi[m] = k + 1
    y = _zeros((n,)); S = _zeros((n, K))
    yt = _zeros((n,)); St = _zeros((n, K))
    yn = _zeros((n,)); Sn = _zeros((n, K))
    peak = _zeros((n,)); speak = _zeros((n, K))
    y_cycle = _zeros((n,)); S_cycle = _zeros((n, K))
@DENSE_ALLOC@
@ALLOC@
    f0 = _zeros((n,)); f1 = _zeros((n,))
    Jp = _zeros((n, n_par)); J0 = _zeros((n, n_par))
    g = _zeros((1,)); gy = _zeros((n,)); gp = _zeros((n_par,))
    gpar = _zeros((n_par,)); glag = _zeros((n_par,))
    rates = _zeros((n,)); drates = _zeros((n, K))
    ctl = _zeros((7,))
    inf = math.inf
    for i in range(N):
        p = P[i]
        e0 = ev_start[i]
        ne = ev_start[i + 1] - e0
        j = obs_subject_start[i]
        j_end = obs_subject_start[i + 1]
        while j < j_end and obs_time[j] < 0.0:  # before the first dose: the pre-dose baseline
            tb = obs_time[j]
            _record_baseline(j, obs_analyte[j], tb, p, C[_segment(seg_start, seg_time, i, tb)], est, g, gp,
                             pred, dpred)
            j += 1
        if j == j_end:
            continue
        # when each event happens: its recorded time plus the lag of its target; then in order
        for q in range(ne):
            e = e0 + q
            tau = ev_time[e]
            if ev_kind[e] < 3:  # doses arrive after their lag; resets and steady states do not wait
                dose_lag(ev_target[e], p, C[_segment(seg_start, seg_time, i, ev_time[e])], g)
                tau += g[0]
            ev_tau[q] = tau
            ev_order[q] = q
            inf_on[q] = 0
        for q in range(1, ne):  # insertion sort, stable (nearly sorted already)
            key = ev_order[q]
            r = q - 1
            while r >= 0 and ev_tau[ev_order[r]] > ev_tau[key]:
                ev_order[r + 1] = ev_order[r]
                r -= 1
            ev_order[r + 1] = key
        sg = _segment(seg_start, seg_time, i, 0.0)
        c = C[sg]
        _start(p, c, sens, y, S, J0)
        for a in range(n):
            peak[a] = abs(y[a])
            for q in range(K):
                speak[a, q] = abs(S[a, q])
        infusing = _set_rates(ne, inf_on, inf_target, inf_rate, inf_drate, rates, drates)
        for q in range(7):
            ctl[q] = 0.0
        ctl[1] = 1e-4
        t = 0.0
        qe = 0
        while j < j_end and ctl[5] == 0.0:
            t_rec = obs_time[j]
            t_ev = ev_tau[ev_order[qe]] if qe < ne else inf
            t_seg = seg_time[sg + 1] if sg + 1 < seg_start[i + 1] else inf
            t_end = inf
            ending = -1
            if infusing:
                for q in range(ne):
                    if inf_on[q] and inf_end[q] < t_end:
                        t_end = inf_end[q]
                        ending = q
@BETWEEN@
            t_stop = min(min(t_rec, t_ev), min(t_seg, t_end))
            if t_stop > t:
                t, parity@J@ = _integrate@VARIANT@_@NAME@(t, t_stop, y, S, p, c, sens, hi, rtol, atol, h_max, max_steps,
                                              control_sens, ctl, yt, St, yn, Sn, peak, speak, f0, f1, Jp,
                                              rates, drates, infusing, @LANDING@@KCALL@)
@SWAP16@
                if ctl[5] > 0.0:
                    break
            # at t_stop: a covariate change, an infusion's end, an event, then the record
            if t_seg <= t_stop:
                sg += 1
                c = C[sg]
                ctl[2] = 0.0
            elif t_end <= t_stop:
                inf_on[ending] = 0
                k = inf_target[ending]
                for q in range(K):
                    S[k, q] += inf_rate[ending] * inf_dend[ending, q]
                infusing = _set_rates(ne, inf_on, inf_target, inf_rate, inf_drate, rates, drates)
                ctl[0] = 0.0
                ctl[2] = 0.0
            elif t_ev <= t_stop:
                slot = ev_order[qe]
                qe += 1
                e = e0 + slot
                kind = ev_kind[e]
                if kind >= 3:  # a reset, or the start of a steady state: initial states, no infusion
                    _start(p, c, sens, y, S, J0)
                    for q in range(ne):
                        inf_on[q] = 0
                    infusing = _set_rates(ne, inf_on, inf_target, inf_rate, inf_drate, rates, drates)
                if kind == 4:
                    # steady state before the dose that follows (event e + 1, given every ev_ss[e]): its
                    # regimen repeated over cycles [t - II, t] until nothing changes over a cycle
                    d = e + 1
                    k = ev_target[d]
                    state = dose_state[k]
                    interval = ev_ss[e]
                    dose_lag(k, p, c, g)
                    arrival = t - interval + g[0]
                    settled = False
                    if arrival >= t:  # a lag as long as the interval: not supported
                        ctl[5] = 1.0
                        break
                    for cycle in range(1000):
                        for m in range(n):
                            y_cycle[m] = y[m]
                            for q in range(K):
                                S_cycle[m, q] = S[m, q]
                        ctl[0] = 0.0
                        ctl[2] = 0.0
                        ts, parity@J@ = _integrate@VARIANT@_@NAME@(t - interval, arrival, y, S, p, c, sens, hi, rtol, atol, h_max,
                                                       max_steps, control_sens, ctl, yt, St, yn, Sn, peak, speak,
                                                       f0, f1, Jp, rates, drates, infusing, @LANDING@@KCALL@)
@SWAP24@
                        _give(arrival, d - e0, ev_kind[d], k, state, ev_amount[d], ev_length[d], True, p, c, sens,
                              y, S, f0, f1, gpar, glag, inf_on, inf_end, inf_target, inf_rate, inf_drate, inf_dend,
                              rates, infusing)
                        infusing = _set_rates(ne, inf_on, inf_target, inf_rate, inf_drate, rates, drates)
                        ctl[0] = 0.0
                        ctl[2] = 0.0
                        if infusing:
                            slot = d - e0
                            ts, parity@J@ = _integrate@VARIANT@_@NAME@(arrival, inf_end[slot], y, S, p, c, sens, hi, rtol, atol,
                                                           h_max, max_steps, control_sens, ctl, yt, St, yn, Sn,
                                                           peak, speak, f0, f1, Jp, rates, drates, infusing,
                                                           @LANDING@@KCALL@)
@SWAP28@
                            inf_on[slot] = 0
                            for q in range(K):
                                S[state, q] += inf_rate[slot] * inf_dend[slot, q]
                            infusing = _set_rates(ne, inf_on, inf_target, inf_rate, inf_drate, rates, drates)
                            ctl[0] = 0.0
                            ctl[2] = 0.0
                        ts, parity@J@ = _integrate@VARIANT@_@NAME@(ts, t, y, S, p, c, sens, hi, rtol, atol, h_max, max_steps,
                                                       control_sens, ctl, yt, St, yn, Sn, peak, speak, f0, f1, Jp,
                                                       rates, drates, infusing, @LANDING@@KCALL@)
@SWAP24@
                        if ctl[5] > 0.0:
                            break
                        settled = True  # states and sensitivities alike
                        for m in range(n):
                            if abs(y[m] - y_cycle[m]) > rtol * abs(y[m]) + atol * peak[m]:
                                settled = False
                            for q in range(K):
                                if abs(S[m, q] - S_cycle[m, q]) > rtol * abs(S[m, q]) + atol * speak[m, q]:
                                    settled = False
                        if settled:
                            break
                    if not settled:
                        ctl[5] = 1.0
                        break
                elif kind != 3:
                    k = ev_target[e]
                    _give(t, slot, kind, k, dose_state[k], ev_amount[e], ev_length[e], True, p, c, sens, y, S, f0,
                          f1, gpar, glag, inf_on, inf_end, inf_target, inf_rate, inf_drate, inf_dend, rates, infusing)
                    infusing = _set_rates(ne, inf_on, inf_target, inf_rate, inf_drate, rates, drates)
                    for a in range(n):
                        peak[a] = max(peak[a], abs(y[a]))
                ctl[0] = 0.0
                ctl[2] = 0.0
            else:
                _record(j, obs_analyte[j], t_rec, y, S, p, c, est, col, g, gy, gp, pred, dpred)
                j += 1
        n_steps[i] += int(ctl[6])
        while j < j_end:  # the solver failed: NaN from here on
            pred[j] = np.nan
            for q in range(est.shape[0]):
                dpred[j, q] = np.nan
            j += 1
"""

# `predict_all_dense_<pair>` (Tolerances.interpolate): records before the next event, covariate
# change or the subject's last record are interpolated in the step that passes them; its other
# calls integrate with `_integrate_dense` too (no records to pass: one integrator per kernel,
# which keeps its compile time near the landing kernel's)
_BETWEEN = """            t_hard = min(min(t_ev, obs_time[j_end - 1]), min(t_seg, t_end))
            if t_rec < t_hard:
                if t_rec <= t:
                    _record(j, obs_analyte[j], t_rec, y, S, p, c, est, col, g, gy, gp, pred, dpred)
                    j += 1
                    continue
                j_lim = j + 1
                while j_lim < j_end and obs_time[j_lim] < t_hard:
                    j_lim += 1
                t, parity, j = _integrate_dense_@NAME@(t, t_hard, y, S, p, c, sens, hi, rtol, atol, h_max,
                                                       max_steps, control_sens, ctl, yt, St, yn, Sn, peak, speak, f0,
                                                       f1, Jp, rates, drates, infusing, j, j_lim, @RECORDS@, @KCALL@)
@SWAP16@
                if ctl[5] > 0.0:
                    break
                continue
"""


def _combination(target: str, base: str | None, weights, vector: str, indent: str) -> list[str]:
    """`target = base + h*sum(w_r * vector_r)` for one component, zero weights left out."""
    terms = [f"{float(w)!r} * {vector.format(r=r)}" for r, w in enumerate(weights) if w != 0.0]
    total = " + ".join(terms) if terms else "0.0"
    return [f"{indent}{target} = " + (f"{base} + " if base else "") + f"h * ({total})"]


def _adaptive_source(method: str) -> str:
    """The integrator and kernel `predict_all_<method>` of one embedded pair of TABLEAUS, its
    stages unrolled."""
    A, b, e, c, order, fsal = TABLEAUS[method]
    ns = len(b)
    alloc = [f"    k{r} = _zeros((n,)); kS{r} = _zeros((n, K))" for r in range(ns)]
    kargs = ", ".join(f"k{r}, kS{r}" for r in range(ns))
    stages = ["        # stages 1..ns-1 (stage 0: f at (t, y), kept from the last step)"]
    for s in range(1, ns):
        stages += ["        for m in range(n):"]
        stages += _combination("yt[m]", "y[m]", A[s, :s], "k{r}[m]", " " * 12)
        stages += ["            for q in range(hi[m]):"]
        stages += _combination("St[m, q]", "S[m, q]", A[s, :s], "kS{r}[m, q]", " " * 16)
        stages += [f"        _derivs(t + {float(c[s])!r} * h, yt, St, p, c, est, hi, k{s}, kS{s}, Jp, rates, drates, "
                   "infusing)"]
    stages += ["        # new solution (yn, Sn) and its error estimate (yt, St)",
               "        for m in range(n):"]
    stages += _combination("yn[m]", "y[m]", b, "k{r}[m]", " " * 12)
    stages += _combination("yt[m]", None, e, "k{r}[m]", " " * 12)
    stages += ["            for q in range(hi[m]):"]
    stages += _combination("Sn[m, q]", "S[m, q]", b, "kS{r}[m, q]", " " * 16)
    stages += _combination("St[m, q]", None, e, "kS{r}[m, q]", " " * 16)
    last = ns - 1
    if fsal:  # the last stage is f at the new point: the next step's first
        f_new, f_keep, k_new = [], [], f"k{last}, kS{last}"
        accept = [f"            k0, k{last} = k{last}, k0", f"            kS0, kS{last} = kS{last}, kS0",
                  "            parity = not parity"]
        accept_dense = accept
        swap = lambda indent: "\n".join([f"{indent}if parity:", f"{indent}    k0, k{last} = k{last}, k0",
                                         f"{indent}    kS0, kS{last} = kS{last}, kS0"])
    else:  # f at the new point, computed for the interpolation, is the next step's first stage
        f_new = ["                _derivs(t_new, yn, Sn, p, c, est, hi, k1, kS1, Jp, rates, drates, infusing)"]
        f_keep = ["                for m in range(n):", "                    k0[m] = k1[m]",
                  "                    for q in range(hi[m]):", "                        kS0[m, q] = kS1[m, q]",
                  "                fresh = True"]
        k_new = "k1, kS1"
        accept, accept_dense = ["            have_k0 = False"], ["            have_k0 = fresh"]
        swap = lambda indent: f"{indent}pass"
    dense = ["            fresh = False",
             "            if jr < j_lim and obs_time[jr] <= t_new:  # records this step passes", *f_new,
             f"                jr = _dense_records(jr, j_lim, t, t_new, y, S, k0, kS0, yn, Sn, {k_new}, hi, obs_time,",
             "                                    obs_analyte, p, c, est_rec, col, g, gy, gp, pred, dpred, y_at, S_at)",
             *f_keep]

    def integrator(variant: str, block: list[str], accepted: list[str], parameters: str, returned: str) -> str:
        return (_INTEGRATE.replace("@VARIANT@", variant).replace("@RECPARAMS@", parameters)
                .replace("@DENSE@\n", "".join(line + "\n" for line in block))
                .replace("@ACCEPT@", "\n".join(accepted)).replace("@RETURN@", returned))

    def kernel(dense: bool) -> str:
        return (_ADAPTIVE.replace("@VARIANT@", "_dense" if dense else "").replace("@J@", ", _" if dense else "")
                .replace("@LANDING@", "j, j, @RECORDS@, " if dense else "")  # the empty range of records
                .replace("@BETWEEN@\n", _BETWEEN if dense else "")
                .replace("@DENSE_ALLOC@\n", "    y_at = _zeros((n,)); S_at = _zeros((n, K))\n" if dense else ""))

    records = "obs_time, obs_analyte, est, col, g, gy, gp, pred, dpred, y_at, S_at"
    source = (integrator("", [], accept, "", "")
              + integrator("_dense", dense, accept_dense, " jr, j_lim, " + records.replace("est,", "est_rec,") + ",",
                           ", jr") + kernel(False) + kernel(True))
    source = (source.replace("@NAME@", method).replace("@ORDER@", repr(float(order)))
              .replace("@ALLOC@", "\n".join(alloc)).replace("@STAGES@", "\n".join(stages))
              .replace("@KARGS@", kargs).replace("@KCALL@", kargs).replace("@RECORDS@", records))
    return re.sub(r"@SWAP(\d+)@", lambda m: swap(" " * int(m.group(1))), source)


class _Printer(PythonCodePrinter):
    def _print_Piecewise(self, expr):  # nested conditional expressions, numba-friendly
        *pairs, (last, _) = expr.args
        out = f"({self._print(last)})"
        for value, cond in reversed(pairs):
            out = f"(({self._print(value)}) if ({self._print(cond)}) else {out})"
        return out


def _cache_dir() -> Path:
    root = cache_root() / "compiled"
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
             "def rhs_sens(t, y, S, p, c, est, hi, f, dS, Jp):",
             *_body(assignments, names, printer, zero_first=False)]
    for i in range(n):  # columns hi[i] on are structurally zero in row i (see the kernel)
        products = "".join(f" + {name} * S[{m}, k]" for name, m in terms[i])
        lines += [f"    for k in range(hi[{i}]):", f"        dS[{i}, k] = Jp[{i}, est[k]]{products}"]
    return lines + [""]


def sensitivity_pattern(model: Model) -> np.ndarray:
    """(n_states, n_parameters) bool: which parameters each state can depend on, structurally.

    A parameter reaches a state through its initial value, its right-hand side, or the
    bioavailability or lag of a dose into it, and from there every state whose right-hand side
    reads that state (to a fixed point). The kernels carry only these sensitivities: in a
    composed model most are zero (a cytokine at quasi-steady state, an immunoglobulin's
    baseline, act on one state or on none)."""
    s = model.symbols
    states = list(s["states"].values())
    params = [s["params"][n] for n in model.parameter_names]
    n = len(states)
    pattern = np.zeros((n, len(params)), dtype=bool)
    reads = np.zeros((n, n), dtype=bool)  # reads[i, j]: the right-hand side of state i reads state j
    for i in range(n):
        free = sp.sympify(s["rhs"][i]).free_symbols | sp.sympify(s["initial"][i]).free_symbols
        pattern[i] = [q in free for q in params]
        reads[i] = [y in free for y in states]
    for d in s["dosing"]:
        free = sp.sympify(d["bioavailability"]).free_symbols | sp.sympify(d["lag"]).free_symbols
        pattern[d["state"]] |= [q in free for q in params]
    while True:
        grown = pattern | (reads.astype(int) @ pattern.astype(int) > 0)
        if (grown == pattern).all():
            return pattern
        pattern = grown


def _source(model: Model) -> str:
    s = model.symbols
    printer = _Printer({"fully_qualified_modules": True, "standard": "python3"})
    t = s["t"]
    states = list(s["states"].values())
    params = [s["params"][n] for n in model.parameter_names]
    covs = [s["covariates"][n] for n in model.covariate_names]
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
    pattern = sensitivity_pattern(model).astype(int).tolist()
    src += [f"SENSITIVE = np.array({pattern}, dtype=np.bool_).reshape(({n}, {P}))", ""]
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
    # bioavailability and lag of each dosing target, with their parameter derivatives
    dosing = s["dosing"]
    for k, d in enumerate(dosing):
        for kind, expr in (("f", d["bioavailability"]), ("lag", d["lag"])):
            src += fn(f"dose_{kind}_{k}", "p, c, out", [("out[0]", expr)], zero_first=True)
            src += fn(f"dose_{kind}_{k}_p", "p, c, out", [(f"out[{q}]", sp.diff(expr, params[q])) for q in range(P)],
                      True)
    for kind, default in (("f", "out[0] = 1.0"), ("f_p", "out[:] = 0.0"), ("lag", "out[0] = 0.0"),
                          ("lag_p", "out[:] = 0.0")):
        src += ["@numba.njit(cache=True, error_model=\"numpy\", inline=\"always\")", f"def dose_{kind}(k, p, c, out):"]
        for k in range(len(dosing)):
            name = f"dose_{kind.split('_')[0]}_{k}" + ("_p" if kind.endswith("_p") else "")
            src += [f"    {'if' if k == 0 else 'elif'} k == {k}:", f"        {name}(p, c, out)"]
        src += [f"    {'else:' if dosing else 'if True:'}", f"        {default}", ""]
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


def expressions_key(model: Model) -> str:
    """Digest of what the generated module is made from: the model's expressions (right-hand
    sides, initial values, observations, dosing) in their order, with pkpd's source and sympy's
    version (the generator and its printer)."""
    from .._cache import source_digest

    s = model.symbols
    parts = [sp.__version__, source_digest(), model.parameter_names, model.covariate_names, list(s["states"]),
             list(model.analytes), [sp.srepr(e) for e in (*s["rhs"], *s["initial"])],
             [(sp.srepr(s["observe"][a]), sp.srepr(s["baseline_observe"][a])) for a in model.analytes],
             [(d["state"], sp.srepr(d["bioavailability"]), sp.srepr(d["lag"])) for d in s["dosing"]]]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _generated_file(model: Model) -> tuple[Path, str]:
    """(path, digest) of the generated module of `model`, its text verified against its digest.

    Generating the source (symbolic derivatives, common subexpressions) takes 0.3-3 s, so an
    index file per expressions key names the module generated before; a missing or damaged
    index or module, or one whose text no longer matches its digest, is generated again."""
    index = _cache_dir() / f"key_{expressions_key(model)}.txt"
    try:
        digest = index.read_text(encoding="ascii").strip()
        path = _cache_dir() / f"pkpd_{digest}.py"
        if re.fullmatch(r"[0-9a-f]{16}", digest) and hashlib.sha256(path.read_bytes()).hexdigest()[:16] == digest:
            return path, digest
    except (OSError, UnicodeDecodeError):
        pass
    source = _source(model).encode()
    digest = hashlib.sha256(source).hexdigest()[:16]
    path = _cache_dir() / f"pkpd_{digest}.py"
    # import only the code generated here: a file at the cache path whose text differs (edited,
    # truncated or planted) is written over before the import
    if not path.is_file() or path.read_bytes() != source:
        _write_atomically(path, source)
    _write_atomically(index, digest.encode())
    return path, digest


def _write_atomically(path: Path, content: bytes) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


@lru_cache(maxsize=32)
def compiled_functions(model: Model):
    """The module of numba functions for `model` (generated once, cached on disk)."""
    path, digest = _generated_file(model)
    name = f"pkpd_compiled_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
