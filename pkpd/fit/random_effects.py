"""The random-effects map: the sampler's free u -> each subject's log parameters with variability.

With the population prior eta_i ~ N(0, Omega) around `typical_i`, and H_i the information the
subject's data carry about its log parameters (Gauss-Newton, from the individual fits) around
its individual estimate c_i:

    Lambda_i = H_i + Omega^-1 = C_i C_i^T                     (Cholesky)
    log theta_i = Lambda_i^-1 (H_i c_i + Omega^-1 typical_i) + C_i^-T u_i

This is the Gaussian approximation of the subject's conditional posterior, whitened: where the
data say little (H_i -> 0) it is the non-centred parameterisation (typical + omega * u), where
they say much the centred one, decorrelated by the data. Either way u is near N(0, I) whatever
Omega is: no funnel, and no within-subject correlation for a diagonal mass matrix to miss. The
log prior density returned includes the Jacobian of the map (-sum log diag C_i), so the posterior
is exactly the hierarchical model's; only the sampler's coordinates change.

The per-subject linear algebra (Q x Q, Q the parameters with variability) runs in one compiled
loop with a hand-written reverse pass (`WhiteningOp`): a pytensor graph of batched Cholesky
factorisations costs more than a closed-form model's predictions. The backward pass of the
Cholesky factor follows Murray (2016), "Differentiation of the Cholesky decomposition".
"""

from __future__ import annotations

import hashlib

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key

from .._cache import source_digest


@numba.njit(cache=True, error_model="numpy", inline="always")
def _cholesky(A, C):
    Q = A.shape[0]
    for j in range(Q):
        s = A[j, j]
        for k in range(j):
            s -= C[j, k] * C[j, k]
        C[j, j] = np.sqrt(s)  # NaN if not positive definite: the density rejects the point
        for i in range(j + 1, Q):
            s = A[i, j]
            for k in range(j):
                s -= C[i, k] * C[j, k]
            C[i, j] = s / C[j, j]


@numba.njit(cache=True, error_model="numpy", inline="always")
def _solve_lower(C, b, out):  # C out = b
    for i in range(C.shape[0]):
        s = b[i]
        for k in range(i):
            s -= C[i, k] * out[k]
        out[i] = s / C[i, i]


@numba.njit(cache=True, error_model="numpy", inline="always")
def _solve_upper(C, b, out):  # C^T out = b
    Q = C.shape[0]
    for i in range(Q - 1, -1, -1):
        s = b[i]
        for k in range(i + 1, Q):
            s -= C[k, i] * out[k]
        out[i] = s / C[i, i]


@numba.njit(cache=True, error_model="numpy")
def whiten(u, t, omega_inv, c, H):
    """(x (N, Q), sum over subjects of log det C_i, the factors C (N, Q, Q)), per subject:
    C C^T = H + Omega^-1, x = Lambda^-1 (H c + Omega^-1 t) + C^-T u."""
    N, Q = u.shape
    x = np.empty((N, Q))
    C = np.zeros((N, Q, Q))
    A, b, w, x1, v = np.empty((Q, Q)), np.empty(Q), np.empty(Q), np.empty(Q), np.empty(Q)
    log_det = 0.0
    for i in range(N):
        for j in range(Q):
            s = 0.0
            for k in range(Q):
                A[j, k] = H[i, j, k] + omega_inv[j, k]
                s += H[i, j, k] * c[i, k] + omega_inv[j, k] * t[i, k]
            b[j] = s
        _cholesky(A, C[i])
        _solve_lower(C[i], b, w)
        _solve_upper(C[i], w, x1)
        _solve_upper(C[i], u[i], v)
        for j in range(Q):
            x[i, j] = x1[j] + v[j]
            log_det += np.log(C[i, j, j])
    return x, log_det, C


@numba.njit(cache=True, error_model="numpy", inline="always")
def _lower_inverse(C, out):
    # C^-1 (lower triangular), column by column from the diagonal down
    Q = C.shape[0]
    for k in range(Q):
        out[k, k] = 1.0 / C[k, k]
        for j in range(k + 1, Q):
            s = 0.0
            for m in range(k, j):
                s -= C[j, m] * out[m, k]
            out[j, k] = s / C[j, j]


@numba.njit(cache=True, error_model="numpy")
def whiten_pullback(u, t, omega_inv, C_all, x, gx, g_log_det, diagonal):
    """Gradients of <gx, x> + g_log_det * log_det with respect to u, t and Omega^-1, from the
    forward pass's factors C and values x; `diagonal`: Omega is diagonal, so that only the
    diagonal of the gradient with respect to Omega^-1 is needed (the rest is left at zero).

    Through v = C^-T u the gradient with respect to C is -v a^T (a = C^-1 gx), and Murray's
    P = Phi(C^T gC) collapses to -Phi(u a^T) because C^T v = u: the Cholesky backward pass
    C^-T P C^-1 then costs O(Q^2) per entry column, with C^-1 lower triangular."""
    N, Q = u.shape
    gu = np.empty((N, Q))
    gt = np.empty((N, Q))
    g_omega_inv = np.zeros((Q, Q))
    v, a, gb = np.empty(Q), np.empty(Q), np.empty(Q)
    C_inv = np.zeros((Q, Q))
    PC = np.zeros((Q, Q))
    for i in range(N):
        C = C_all[i]
        ui = u[i]
        _solve_upper(C, ui, v)  # v = C^-T u; x - v = Lambda^-1 b
        _lower_inverse(C, C_inv)
        _solve_lower(C, gx[i], a)  # a = C^-1 gx: the gradient with respect to u
        _solve_upper(C, a, gb)  # gb = Lambda^-1 gx: the gradient with respect to b
        for j in range(Q):
            gu[i, j] = a[j]
        # gLambda = C^-T P C^-1 (through C) - gb (x - v)^T (through Lambda^-1 b)
        #           + 0.5 g_log_det Lambda^-1 (log det C = 0.5 log det Lambda);
        # Lambda = H + Omega^-1 and b = H c + Omega^-1 t
        if diagonal:
            for j in range(Q):
                through_c, prefix, lam_inv = 0.0, 0.0, 0.0
                for m in range(j, Q):
                    cm = C_inv[m, j]
                    through_c -= cm * ui[m] * (prefix + 0.5 * a[m] * cm)
                    prefix += a[m] * cm
                    lam_inv += cm * cm
                g_omega_inv[j, j] += through_c - gb[j] * (x[i, j] - v[j]) + 0.5 * g_log_det * lam_inv \
                    + gb[j] * t[i, j]
        else:
            # PC = P C^-1, zero above the diagonal
            for k in range(Q):
                prefix = 0.0
                for m in range(k, Q):
                    PC[m, k] = -ui[m] * (prefix + 0.5 * a[m] * C_inv[m, k])
                    prefix += a[m] * C_inv[m, k]
            for j in range(Q):
                for k in range(Q):
                    through_c, lam_inv = 0.0, 0.0
                    for m in range(max(j, k), Q):
                        through_c += C_inv[m, j] * PC[m, k]
                        lam_inv += C_inv[m, j] * C_inv[m, k]
                    g_omega_inv[j, k] += through_c - gb[j] * (x[i, k] - v[k]) + 0.5 * g_log_det * lam_inv \
                        + gb[j] * t[i, k]
        for j in range(Q):
            s = 0.0
            for k in range(j if diagonal else 0, j + 1 if diagonal else Q):
                s += omega_inv[k, j] * gb[k]
            gt[i, j] = s
    # symmetric perturbations of Omega^-1 are the only ones: report the symmetric part
    return gu, gt, 0.5 * (g_omega_inv + g_omega_inv.T)


class WhiteningOp(Op):
    """(u, typical, Omega^-1, centre, information) -> (log theta with variability, sum log det C,
    the factors C for the reverse pass). diagonal: Omega is diagonal."""

    __props__ = ("diagonal",)

    def __init__(self, diagonal: bool):
        self.diagonal = bool(diagonal)

    def make_node(self, u, typical, omega_inv, centre, information):
        inputs = [pt.as_tensor_variable(v).astype("float64") for v in (u, typical, omega_inv, centre, information)]
        return Apply(self, inputs, [pt.dmatrix(), pt.dscalar(), pt.dtensor3()])

    def perform(self, node, inputs, outputs):
        x, log_det, C = whiten(*[np.asarray(v, dtype=float) for v in inputs])
        outputs[0][0] = x
        outputs[1][0] = np.asarray(log_det)
        outputs[2][0] = C

    def connection_pattern(self, node):
        return [[True, True, True], [True, True, True], [True, True, True], [False, False, False],
                [False, False, False]]

    def pullback(self, inputs, outputs, output_grads):
        gx, g_log_det, g_C = output_grads
        if not isinstance(g_C.type, DisconnectedType):
            raise NotImplementedError("the factors output of WhiteningOp cannot be differentiated")
        u, t, omega_inv = inputs[:3]
        x, _, C = outputs
        gx = pt.zeros_like(u) if isinstance(gx.type, DisconnectedType) else gx
        g_log_det = pt.as_tensor_variable(0.0) if isinstance(g_log_det.type, DisconnectedType) else g_log_det
        gu, gt, g_omega_inv = WhiteningGradOp(self.diagonal)(u, t, omega_inv, C, x, gx, g_log_det)
        return [gu, gt, g_omega_inv, DisconnectedType()(), DisconnectedType()()]


class WhiteningGradOp(Op):
    __props__ = ("diagonal",)

    def __init__(self, diagonal: bool):
        self.diagonal = bool(diagonal)

    def make_node(self, *args):
        inputs = [pt.as_tensor_variable(v).astype("float64") for v in args]
        return Apply(self, inputs, [pt.dmatrix(), pt.dmatrix(), pt.dmatrix()])

    def perform(self, node, inputs, outputs):
        values = whiten_pullback(*[np.asarray(v, dtype=float) for v in inputs[:6]], float(inputs[6]), self.diagonal)
        for out, value in zip(outputs, values):
            out[0] = value


def _cache_key(op) -> str:
    """The Op's kind and props and this module's source: what its compiled form depends on (for
    pytensor's numba cache, which keeps the sampler's compiled log density across processes)."""
    return hashlib.sha256(f"{type(op).__qualname__}:{op.diagonal}:{source_digest()}".encode()).hexdigest()


@register_funcify_and_cache_key(WhiteningOp)
def _numba_whiten(op, node=None, **kwargs):
    @numba.njit
    def forward(u, t, omega_inv, c, H):
        x, log_det, C = whiten(u, t, omega_inv, c, H)
        return x, np.array(log_det), C

    return forward, _cache_key(op)


@register_funcify_and_cache_key(WhiteningGradOp)
def _numba_whiten_pullback(op, node=None, **kwargs):
    diagonal = op.diagonal

    @numba.njit
    def backward(u, t, omega_inv, C, x, gx, g_log_det):
        return whiten_pullback(u, t, omega_inv, C, x, gx, g_log_det[()], diagonal)

    return backward, _cache_key(op)


def random_effects(u, typical, omega, chol, centre, information):
    """(log theta with variability (N, Q), log prior density of it including the Jacobian).

    omega: (Q,) SDs of independent random effects, or chol: the Cholesky factor of Omega."""
    Q = information.shape[1]
    if chol is None:
        omega_inv = pt.diag(1.0 / pt.square(omega))
        half_log_det_omega = pt.sum(pt.log(omega))
    else:
        from pytensor.tensor.linalg import solve_triangular

        chol_inv = solve_triangular(chol, pt.eye(Q), lower=True)
        omega_inv = pt.dot(chol_inv.T, chol_inv)
        half_log_det_omega = pt.sum(pt.log(pt.diagonal(chol)))
    individual, log_det_C, _ = WhiteningOp(diagonal=chol is None)(u, typical, omega_inv, centre, information)
    eta = individual - typical
    n = eta.shape[0]
    log_prior = (-0.5 * pt.sum(eta * pt.dot(eta, omega_inv)) - n * half_log_det_omega
                 - 0.5 * n * Q * np.log(2 * np.pi) - log_det_C)
    return individual, log_prior
