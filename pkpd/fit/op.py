"""A pytensor Op: predictions of every record and their derivatives, from the compiled solver.

Input: log individual parameters (N, K). Outputs: predictions (n_obs,) and their derivatives
with respect to the log parameters (n_obs, K). The gradient of anything built on the
predictions is then a sparse vector-Jacobian product (each record depends only on its own
subject). A numba implementation is registered, so nutpie's numba backend compiles the whole
log-density, solver included, without Python in the loop.
"""

from __future__ import annotations

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch import numba_funcify

from ..simulate.compiled import Design, Solver, StepSizes, predict_compiled, solver_call


class PredictionsOp(Op):
    __props__ = ("key",)

    def __init__(self, design: Design, estimated: list[str], fixed: np.ndarray, steps: Solver):
        model = design.model
        self.design = design
        self.estimated = list(estimated)
        self.est = np.array([model.parameter_names.index(n) for n in estimated], dtype=np.int64)
        self.fixed = np.ascontiguousarray(fixed, dtype=float)  # (N, n_parameters)
        self.steps = steps
        self.key = f"{model.hash}:{id(design)}:{','.join(estimated)}:{steps}"

    def make_node(self, log_theta):
        log_theta = pt.as_tensor_variable(log_theta).astype("float64")
        return Apply(self, [log_theta], [pt.dvector(), pt.dmatrix()])

    def values(self, log_theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        P = self.fixed.copy()
        theta = np.exp(log_theta)
        P[:, self.est] = theta
        pred, dpred = predict_compiled(self.design, P, self.estimated, self.steps)
        return pred, dpred * theta[self.design.subject_index]

    def perform(self, node, inputs, outputs):
        pred, jac = self.values(np.asarray(inputs[0], dtype=float))
        outputs[0][0] = pred
        outputs[1][0] = jac

    def connection_pattern(self, node):
        return [[True, True]]

    def pullback(self, inputs, outputs, output_grads):
        (log_theta,) = inputs
        _, jac = outputs
        g_pred, g_jac = output_grads
        if not isinstance(g_jac.type, DisconnectedType):
            raise NotImplementedError("the derivative output of PredictionsOp cannot be differentiated")
        if isinstance(g_pred.type, DisconnectedType):
            return [pt.zeros_like(log_theta)]
        contribution = g_pred[:, None] * jac
        index = pt.as_tensor_variable(self.design.subject_index)
        return [pt.inc_subtensor(pt.zeros_like(log_theta)[index], contribution)]


@numba_funcify.register(PredictionsOp)
def _numba_predictions(op, node=None, **kwargs):
    d = op.design
    kernel, args = solver_call(d, op.steps)
    fixed, est = op.fixed, op.est
    covariates, start, time, analyte = d.covariates, d.start, d.time, d.analyte
    subject_index = d.subject_index
    n_obs, n_states, n_subjects = d.n_obs, len(d.model.states), len(d.subjects)

    if isinstance(op.steps, StepSizes):
        early, late, switch = args

        @numba.njit
        def solve(P, pred, jac):
            kernel(P, covariates, est, start, time, analyte, early, late, switch, n_states, pred, jac)
    else:
        rtol, atol, max_step, max_steps, control_sens = args

        @numba.njit
        def solve(P, pred, jac):
            kernel(P, covariates, est, start, time, analyte, rtol, atol, max_step, max_steps, control_sens,
                   n_states, pred, jac, np.zeros(n_subjects, dtype=np.int64))

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
