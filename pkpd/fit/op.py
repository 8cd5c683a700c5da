"""The sampler's likelihood: one pytensor Op from log individual parameters to log p(y | theta, sigma).

`Predictions` runs the compiled solver (closed forms where the model has them) for every
record, with derivatives with respect to the log parameters. `LogLikelihoodOp` fuses it with
the likelihood kernel: inputs log theta (N, K), sigma (per observed analyte), the observed
values and their censoring flags; outputs the log-likelihood and its gradient with respect to
log theta and sigma, so that the sampler's graph holds one node for the data and its reverse
pass is a product with a stored gradient. A numba implementation is registered, so nutpie's
numba backend compiles the whole log density, solver included, without Python in the loop.
"""

from __future__ import annotations

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType, grad_undefined
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch import numba_funcify

from ..simulate.compiled import Design, Tolerances, predict_compiled, solver_call
from .likelihood import record_terms


class Predictions:
    """Predictions of every record of `design` and their derivatives with respect to the log
    values of the `estimated` parameters; the others stay at `fixed` (N, n_parameters)."""

    def __init__(self, design: Design, estimated: list[str], fixed: np.ndarray, steps: Tolerances):
        model = design.model
        self.design = design
        self.estimated = list(estimated)
        self.est = np.array([model.parameter_names.index(n) for n in estimated], dtype=np.int64)
        self.fixed = np.ascontiguousarray(fixed, dtype=float)
        self.steps = steps
        self.key = f"{model.hash}:{id(design)}:{','.join(estimated)}:{steps}"

    def individual(self, theta: np.ndarray) -> np.ndarray:
        """(N, n_parameters) values: `fixed` with the estimated columns set to theta (N, K)."""
        P = self.fixed.copy()
        P[:, self.est] = theta
        return P

    def values(self, log_theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = np.exp(log_theta)
        pred, dpred = predict_compiled(self.design, self.individual(theta), self.estimated, self.steps)
        return pred, dpred * theta[self.design.subject_index]

    def compiled(self):
        """A numba function log_theta -> (pred, d pred / d log theta), as `values`."""
        d = self.design
        kernel, args = solver_call(d, self.steps)
        fixed, est = self.fixed, self.est
        covariates, seg_start, seg_time = d.kernel_arguments()
        ev_start, ev_time, ev_kind, ev_target, ev_amount, ev_length, ev_ss, dose_state = d.event_arguments()
        start, time, analyte = d.start, d.time, d.analyte
        subject_index = d.subject_index
        n_obs, n_states, n_subjects = d.n_obs, len(d.model.states), len(d.subjects)
        rtol, atol, max_step, max_steps, control_sens = args
        n_events, K = max(d.max_events, 1), len(est)
        # integers and flags through arrays: a captured scalar would reach the kernel as a literal
        # type, and a kernel already compiled (and cached) for the individual fits would compile again
        counts = np.array([max_steps, n_states], dtype=np.int64)
        flags = np.array([control_sens])

        @numba.njit
        def solve(P, pred, jac):
            kernel(P, covariates, seg_start, seg_time, est, start, time, analyte, ev_start, ev_time, ev_kind,
                   ev_target, ev_amount, ev_length, ev_ss, dose_state, rtol, atol, max_step, counts[0], flags[0],
                   counts[1], pred, jac, np.zeros(n_subjects, dtype=np.int64), np.zeros(n_events, np.int64),
                   np.zeros(n_events), np.zeros(n_events, np.int64), np.zeros(n_events), np.zeros(n_events, np.int64),
                   np.zeros(n_events), np.zeros((n_events, K)), np.zeros((n_events, K)))

        @numba.njit
        def predictions(log_theta):
            N, K = log_theta.shape
            P = fixed.copy()
            theta = np.exp(log_theta)
            for i in range(N):
                for k in range(K):
                    P[i, est[k]] = theta[i, k]
            pred = np.empty(n_obs)
            jac = np.zeros((n_obs, K))
            solve(P, pred, jac)
            for j in range(n_obs):
                for k in range(K):
                    jac[j, k] *= theta[subject_index[j], k]
            return pred, jac

        return predictions


@numba.njit(cache=True, error_model="numpy")
def _log_likelihood(pred, jac, subject_index, n_subjects, index_s, index_a, residual, y, lloq, censored, error, m4):
    """(sum of the records' log-likelihoods, gradient (N, K) with respect to log theta, gradient
    with respect to the residual vector); jac: d pred / d log theta of each record; index_s,
    index_a: each record's log-scale/proportional and additive SD in `residual` (-1: none)."""
    n = pred.shape[0]
    s, a = np.zeros(n), np.zeros(n)
    for j in range(n):
        if index_s[j] >= 0:
            s[j] = residual[index_s[j]]
        if index_a[j] >= 0:
            a[j] = residual[index_a[j]]
    out, d_pred, d_sigma, d_additive = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    record_terms(pred, y, lloq, censored, error, s, a, m4, out, d_pred, d_sigma, d_additive)
    grad_theta = np.zeros((n_subjects, jac.shape[1]))
    grad_residual = np.zeros(residual.shape[0])
    for j in range(n):
        i = subject_index[j]
        for k in range(jac.shape[1]):
            grad_theta[i, k] += d_pred[j] * jac[j, k]
        if index_s[j] >= 0:
            grad_residual[index_s[j]] += d_sigma[j]
        if index_a[j] >= 0:
            grad_residual[index_a[j]] += d_additive[j]
    return out.sum(), grad_theta, grad_residual


class LogLikelihoodOp(Op):
    """log p(y | theta, residual SDs) of every record of the design, with its gradient.

    records: `population.record_arrays` (LLOQ, error model and residual SDs of each record);
    m4: M4 censoring. The residual input is the vector [sigma..., sigma_add...]."""

    __props__ = ("key",)

    def __init__(self, predictions: Predictions, records: dict, m4: bool):
        self.predictions = predictions
        self.index_s = np.ascontiguousarray(records["residual_sigma"], dtype=np.int64)
        self.index_a = np.ascontiguousarray(records["residual_additive"], dtype=np.int64)
        self.lloq = np.ascontiguousarray(records["lloq"], dtype=float)
        self.error = np.ascontiguousarray(records["error"], dtype=np.int64)
        self.m4 = bool(m4)
        self.key = f"{predictions.key}:m4={self.m4}"

    def make_node(self, log_theta, sigma, y, censored):
        inputs = [pt.as_tensor_variable(log_theta).astype("float64"), pt.as_tensor_variable(sigma).astype("float64"),
                  pt.as_tensor_variable(y).astype("float64"), pt.as_tensor_variable(censored).astype("int64")]
        return Apply(self, inputs, [pt.dscalar(), pt.dmatrix(), pt.dvector()])

    def _terms(self, pred, jac, sigma, y, censored):
        d = self.predictions.design
        return _log_likelihood(pred, jac, d.subject_index, len(d.subjects), self.index_s, self.index_a, sigma, y,
                               self.lloq, censored, self.error, self.m4)

    def perform(self, node, inputs, outputs):
        log_theta, sigma, y, censored = (np.ascontiguousarray(x) for x in inputs)
        pred, jac = self.predictions.values(log_theta)
        total, grad_theta, grad_sigma = self._terms(pred, np.ascontiguousarray(jac), sigma, y, censored)
        outputs[0][0] = np.asarray(total)
        outputs[1][0] = grad_theta
        outputs[2][0] = grad_sigma

    def connection_pattern(self, node):
        return [[True, True, True]] * 4

    def pullback(self, inputs, outputs, output_grads):
        _, grad_theta, grad_sigma = outputs
        g_total, g_theta, g_sigma = output_grads
        if not (isinstance(g_theta.type, DisconnectedType) and isinstance(g_sigma.type, DisconnectedType)):
            raise NotImplementedError("the gradient outputs of LogLikelihoodOp cannot be differentiated")
        undefined = [grad_undefined(self, i, inputs[i], "observed data are not differentiable") for i in (2, 3)]
        if isinstance(g_total.type, DisconnectedType):
            return [pt.zeros_like(inputs[0]), pt.zeros_like(inputs[1]), *undefined]
        return [g_total * grad_theta, g_total * grad_sigma, *undefined]


@numba_funcify.register(LogLikelihoodOp)
def _numba_log_likelihood(op, node=None, **kwargs):
    predictions = op.predictions.compiled()
    d = op.predictions.design
    subject_index, n_subjects = d.subject_index, len(d.subjects)
    index_s, index_a, lloq, error, m4 = op.index_s, op.index_a, op.lloq, op.error, op.m4

    @numba.njit
    def log_likelihood(log_theta, sigma, y, censored):
        pred, jac = predictions(np.ascontiguousarray(log_theta))
        total, grad_theta, grad_sigma = _log_likelihood(pred, jac, subject_index, n_subjects, index_s, index_a,
                                                        np.ascontiguousarray(sigma), np.ascontiguousarray(y),
                                                        lloq, np.ascontiguousarray(censored), error, m4)
        return np.array(total, dtype=np.float64), grad_theta, grad_sigma

    return log_likelihood
