"""The observation log-likelihood, written once for numpy and for pytensor.

Per record: residual-error model 'log' (ln y ~ N(ln f, s), density on the y scale, so that
models with different error models compare on one scale), 'proportional' (y ~ N(f, s*f)) or
'combined' (y ~ N(f, sqrt(a^2 + (s*f)^2))); below the LLOQ: M3 (P(y < LLOQ)) or M4 (M3
conditioned on y > 0, for the normal error models; for 'log' M4 equals M3); above a limit
(CENS = -1): P(y > limit).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import scipy.special as sc

ERROR_CODE = {"log": 0, "proportional": 1, "combined": 2}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _numpy_namespace():
    return SimpleNamespace(log=np.log, sqrt=np.sqrt, where=np.where, square=np.square, eq=np.equal,
                           maximum=np.maximum, log_ndtr=sc.log_ndtr, exp=np.exp)


def _pytensor_namespace():
    import pytensor.tensor as pt

    def log_ndtr(z):
        # log Phi(z), stable in both tails: erfcx for z < 0, log1p for z >= 0
        neg = pt.log(0.5 * pt.erfcx(-z / math.sqrt(2))) - 0.5 * z * z
        pos = pt.log1p(-0.5 * pt.erfc(z / math.sqrt(2)))
        return pt.switch(z < 0, neg, pos)

    return SimpleNamespace(log=pt.log, sqrt=pt.sqrt, where=pt.switch, square=pt.sqr, maximum=pt.maximum,
                           eq=pt.eq, log_ndtr=log_ndtr, exp=pt.exp)


NUMPY = _numpy_namespace()


def _single_code(error):
    """The error-model code shared by every record, or None (mixed, or not known in advance).
    With one code the expressions below carry no branch for the other error models, which
    keeps the sampler's compiled log density small (its compile time is mostly LLVM's)."""
    error = np.asarray(error) if isinstance(error, (np.ndarray, list, tuple)) else None
    if error is not None and error.size and np.all(error == error.flat[0]):
        return int(error.flat[0])
    return None


def standardise(xp, pred, y, lloq, error, sigma, additive):
    """(z, z_lloq, mean, sd, yy): the value and the LLOQ standardised on the scale of each
    record's error model (log scale for 'log'), with that scale's mean, SD and value."""
    tiny = 1e-300
    f = xp.maximum(pred, tiny)
    code = _single_code(error)
    if code == 0:
        sd, mean, yy, limit = sigma, xp.log(f), xp.log(xp.maximum(y, tiny)), xp.log(xp.maximum(lloq, tiny))
    elif code in (1, 2):
        sd = sigma * f if code == 1 else xp.sqrt(xp.square(additive) + xp.square(sigma * f))
        mean, yy, limit = f, y, lloq
    else:
        is_log = xp.eq(error, 0)
        sd = xp.where(is_log, sigma,
                      xp.where(xp.eq(error, 1), sigma * f, xp.sqrt(xp.square(additive) + xp.square(sigma * f))))
        mean = xp.where(is_log, xp.log(f), f)
        yy = xp.where(is_log, xp.log(xp.maximum(y, tiny)), y)
        limit = xp.where(is_log, xp.log(xp.maximum(lloq, tiny)), lloq)
    return (yy - mean) / sd, (limit - mean) / sd, mean, sd, yy


def pointwise(xp, pred, y, lloq, censored, error, sigma, additive, m4: bool = False):
    """Log-likelihood of each record (arrays aligned by record; `error` holds ERROR_CODE)."""
    tiny = 1e-300
    code = _single_code(error)
    is_log = xp.eq(error, 0) if code is None else code == 0
    z, z_lloq, mean, sd, yy = standardise(xp, pred, y, lloq, error, sigma, additive)
    log_jacobian = yy if code == 0 else 0.0 if code is not None else xp.where(is_log, yy, 0.0)
    density = -0.5 * xp.square(z) - xp.log(sd) - _LOG_SQRT_2PI - log_jacobian
    below = xp.log_ndtr(z_lloq)
    if m4 and code != 0:  # normal error models: condition on y > 0 ('log' has no mass below 0)
        positive = xp.log_ndtr(mean / sd)
        below_m4 = xp.log(xp.maximum(xp.exp(below) - xp.exp(xp.log_ndtr(-mean / sd)), tiny)) - positive
        below = below_m4 if code is not None else xp.where(is_log, below, below_m4)
    above = xp.log_ndtr(-z)  # y holds the upper limit: P(Y > limit) = Phi(-z)
    return xp.where(xp.eq(censored, 1), below, xp.where(xp.eq(censored, -1), above, density))


def residuals(pred, y, lloq, censored, error, sigma, additive) -> np.ndarray:
    """Least-squares residuals whose squares sum to -2 log L up to constants: the standardised
    residual of a quantified value, sqrt(-2 log P) of a censored one (M3)."""
    z, z_lloq, *_ = standardise(NUMPY, pred, y, lloq, error, sigma, additive)
    r = np.where(censored == 0, z, 0.0)
    left, right = censored == 1, censored == -1
    r[left] = np.sqrt(-2 * sc.log_ndtr(z_lloq[left]))
    r[right] = np.sqrt(-2 * sc.log_ndtr(-z[right]))
    return r
