"""The observation log-likelihood: one compiled kernel for the sampler, the LOO log-likelihood
and the individual fits.

Per record: residual-error model 'log' (ln y ~ N(ln f, s), density on the y scale, so that
models with different error models compare on one scale), 'proportional' (y ~ N(f, s*f)),
'combined' (y ~ N(f, sqrt(a^2 + (s*f)^2)); nlmixr2's combined2), 'combined1' (y ~ N(f, a + s*f);
Monolix's default combined error) or 'additive' (y ~ N(f, a)); below the LLOQ: M3
(P(y < LLOQ)) or M4 (M3 conditioned on y > 0, for the normal error models; for 'log' M4 equals
M3); above a limit (CENS = -1): P(y > limit). s and a are the record's proportional (or
log-scale) and additive SDs; the kernel gives the derivatives with respect to both.

The kernel branches per record, so that a quantified value costs one density and a censored
one one normal CDF (a vectorised expression evaluates every branch for every record).
"""

from __future__ import annotations

import math

import numba
import numpy as np

ERROR_CODE = {"log": 0, "proportional": 1, "combined": 2, "additive": 3, "combined1": 4}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_SQRT_HALF = math.sqrt(0.5)
_TINY = 1e-300  # predictions are clamped here (log of 0); below it they carry no gradient


@numba.njit(cache=True, error_model="numpy", inline="always")
def _tail_series(z):
    # Phi(z) = phi(z) / -z * series(z) for z -> -inf; five terms: relative error < 1e-10 below -20
    w = 1.0 / (z * z)
    return 1.0 - w * (1.0 - 3.0 * w * (1.0 - 5.0 * w * (1.0 - 7.0 * w)))


@numba.njit(cache=True, error_model="numpy", inline="always")
def log_ndtr(z):
    """log Phi(z), accurate in both tails (as scipy.special.log_ndtr)."""
    if z > 6.0:
        return math.log1p(-0.5 * math.erfc(z * _SQRT_HALF))
    if z > -20.0:
        return math.log(0.5 * math.erfc(-z * _SQRT_HALF))
    return -0.5 * z * z - math.log(-z) - _LOG_SQRT_2PI + math.log(_tail_series(z))


@numba.njit(cache=True, error_model="numpy", inline="always")
def _d_log_ndtr(z, log_phi):
    # d/dz log Phi(z) = phi(z) / Phi(z) (the inverse Mills ratio); log_phi = log_ndtr(z)
    if z > -20.0:
        return math.exp(-0.5 * z * z - _LOG_SQRT_2PI - log_phi)
    return -z / _tail_series(z)


@numba.njit(cache=True, error_model="numpy", inline="always")
def _normal_pdf(z):
    return math.exp(-0.5 * z * z - _LOG_SQRT_2PI)


@numba.njit(cache=True, error_model="numpy")
def record_terms(pred, y, lloq, censored, error, sigma, additive, m4, out, d_pred, d_sigma, d_additive):
    """Each record's log-likelihood (out) and its derivatives with respect to the record's
    prediction (d_pred) and its residual SDs (d_sigma: proportional or log-scale, d_additive);
    arrays aligned by record."""
    for j in range(pred.shape[0]):
        f = pred[j]
        live = f > _TINY
        if not live:
            f = _TINY
        s, code, c = sigma[j], error[j], censored[j]
        # the record's scale: mean, SD, value and limit on it (the limit only where censored),
        # and their derivatives
        a = additive[j]
        dsd_da = 0.0
        if code == 0:
            mean, sd = math.log(f), s
            yy = math.log(max(y[j], _TINY))
            limit = math.log(max(lloq[j], _TINY)) if c == 1 else 0.0
            dmean_df, dsd_df, dsd_ds = 1.0 / f, 0.0, 1.0
        else:
            mean, yy, limit, dmean_df = f, y[j], lloq[j], 1.0
            if code == 1:
                sd, dsd_df, dsd_ds = s * f, s, f
            elif code == 2:
                sd = math.sqrt(a * a + s * s * f * f)
                dsd_df, dsd_ds, dsd_da = s * s * f / sd, s * f * f / sd, a / sd
            elif code == 4:
                sd, dsd_df, dsd_ds, dsd_da = a + s * f, s, f, 1.0
            else:
                sd, dsd_df, dsd_ds, dsd_da = a, 0.0, 0.0, 1.0
        if c == 0:
            z = (yy - mean) / sd
            value = -0.5 * z * z - math.log(sd) - _LOG_SQRT_2PI - (yy if code == 0 else 0.0)
            g_mean, g_sd = z / sd, (z * z - 1.0) / sd
        elif c == 1 and m4 and code != 0:
            # M4: P(0 < Y < LLOQ) / P(Y > 0)
            zl, q = (limit - mean) / sd, mean / sd
            log_phi_q = log_ndtr(q)
            mass = math.exp(log_ndtr(zl)) - math.exp(log_ndtr(-q))
            r_q = _d_log_ndtr(q, log_phi_q)
            value = math.log(max(mass, _TINY)) - log_phi_q
            g_mean, g_sd = -r_q / sd, r_q * q / sd
            if mass > _TINY:
                pl, p0 = _normal_pdf(zl), _normal_pdf(q)
                g_mean += (p0 - pl) / sd / mass
                g_sd += (-zl * pl - q * p0) / sd / mass
        elif c == 1:
            zl = (limit - mean) / sd
            value = log_ndtr(zl)
            r = _d_log_ndtr(zl, value)
            g_mean, g_sd = -r / sd, -r * zl / sd
        else:  # above a limit: y holds the limit, P(Y > limit) = Phi(-z)
            z = (yy - mean) / sd
            value = log_ndtr(-z)
            r = _d_log_ndtr(-z, value)
            g_mean, g_sd = r / sd, r * z / sd
        out[j] = value
        d_pred[j] = (g_mean * dmean_df + g_sd * dsd_df) if live else 0.0
        d_sigma[j] = g_sd * dsd_ds
        d_additive[j] = g_sd * dsd_da


def _per_record(n, *arrays):
    return [np.ascontiguousarray(np.broadcast_to(a, (n,))) for a in arrays]


def pointwise(pred, y, lloq, censored, error, sigma, additive, m4: bool = False) -> np.ndarray:
    """Log-likelihood of each record (arrays aligned by record; `error` holds ERROR_CODE)."""
    pred = np.asarray(pred, dtype=float)
    n = len(pred)
    y, lloq, sigma, additive = _per_record(n, *(np.asarray(a, dtype=float) for a in (y, lloq, sigma, additive)))
    censored, error = _per_record(n, np.asarray(censored, dtype=np.int64), np.asarray(error, dtype=np.int64))
    out, d_pred, d_sigma, d_additive = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    inputs = (_read_only(a) for a in (pred, y, np.nan_to_num(lloq), censored, error, sigma, additive))
    record_terms(*inputs, bool(m4), out, d_pred, d_sigma, d_additive)
    return out


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only, C-contiguous view of `array`: record_terms' inputs are typed read-only wherever
    it is called (the sampler's log density: `pkpd.fit.op._read_only`), so it compiles once."""
    view = np.ascontiguousarray(array).view()
    view.flags.writeable = False
    return view


def standardise(pred, y, lloq, error, sigma, additive):
    """(z, z_lloq, sd): the value and the LLOQ standardised on the scale of each record's error
    model (log scale for 'log'), and that scale's SD."""
    f = np.maximum(pred, _TINY)
    is_log = error == 0
    sd = np.select([is_log, error == 1, error == 2, error == 4],
                   [sigma, sigma * f, np.sqrt(np.square(additive) + np.square(sigma * f)), additive + sigma * f], additive)
    mean = np.where(is_log, np.log(f), f)
    yy = np.where(is_log, np.log(np.maximum(y, _TINY)), y)
    limit = np.where(is_log, np.log(np.maximum(lloq, _TINY)), lloq)
    return (yy - mean) / sd, (limit - mean) / sd, sd


def residuals(pred, y, lloq, censored, error, sigma, additive) -> np.ndarray:
    """Least-squares residuals whose squares sum to -2 log L up to constants: the standardised
    residual of a quantified value, sqrt(-2 log P) of a censored one (M3)."""
    from scipy.special import log_ndtr  # here: scipy.special costs 0.2 s of every command's start

    z, z_lloq, _ = standardise(pred, y, lloq, error, sigma, additive)
    r = np.where(censored == 0, z, 0.0)
    left, right = censored == 1, censored == -1
    r[left] = np.sqrt(-2 * log_ndtr(z_lloq[left]))
    r[right] = np.sqrt(-2 * log_ndtr(-z[right]))
    return r


def residual_derivatives(pred, dpred, y, lloq, censored, error, sigma, additive) -> tuple[np.ndarray, np.ndarray]:
    """(r, dr): the residuals of `residuals` and their derivatives, dr = dr/dpred * dpred
    (dpred: (n, K) derivatives of the predictions). Where a censored residual is 0 (the record
    is certainly below its limit) its derivative is 0."""
    from scipy.special import log_ndtr

    f = np.maximum(pred, _TINY)
    z, z_lloq, sd = standardise(pred, y, lloq, error, sigma, additive)
    is_log = error == 0
    dmean = np.where(is_log, 1.0 / f, 1.0)
    dsd = np.select([is_log, error == 1, error == 2, error == 4],
                    [0.0, sigma, np.square(sigma) * f / np.maximum(sd, _TINY), sigma], 0.0)
    r = residuals(pred, y, lloq, censored, error, sigma, additive)
    dz = -dmean / sd - z / sd * dsd  # d z / d pred
    dz_lloq = -dmean / sd - z_lloq / sd * dsd
    drdf = np.where(censored == 0, dz, 0.0)
    for rows, zz, sign, dzz in ((censored == 1, z_lloq, 1.0, dz_lloq), (censored == -1, -z, -1.0, dz)):
        live = rows & (r > 1e-8)
        # d/dz sqrt(-2 log Phi(z)) = -phi(z) / Phi(z) / r (the inverse Mills ratio over r)
        mills = np.exp(-0.5 * np.square(zz[live]) - _LOG_SQRT_2PI - log_ndtr(zz[live]))
        drdf[rows] = 0.0
        drdf[live] = -sign * mills / r[live] * dzz[live]
    drdf = np.where(pred > _TINY, drdf, 0.0)
    return r, drdf[:, None] * dpred
