"""The sampler's likelihood: one pytensor Op from log individual parameters to log p(y | theta, sigma).

`Predictions` runs the compiled solver (closed forms where the model has them) for every
record, with derivatives with respect to the log parameters. `LogLikelihoodOp` fuses it with
the likelihood kernel: inputs log theta (N, K), sigma (per observed analyte), the observed
values and their censoring flags, and the design's arrays; outputs the log-likelihood and its
gradient with respect to log theta and sigma, so that the sampler's graph holds one node for
the data and its reverse pass is a product with a stored gradient. A numba implementation is
registered, so nutpie's numba backend compiles the whole log density, solver included, without
Python in the loop.

The design (records, events, covariates, typical values) enters as data, not as constants of
the compiled function, and the implementation carries a cache key made of the model's generated
code, the solver settings, the estimated parameters and this module's source: pytensor's numba
cache then holds the compiled log density on disk, and an unchanged model fitted again, to the
same or to new data, loads it instead of compiling it.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numba
import numpy as np
import pytensor.tensor as pt
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic
from pytensor.gradient import DisconnectedType, grad_undefined
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key

from .._cache import source_digest
from ..simulate.compiled import Design, Tolerances, predict_compiled, solver_call
from .likelihood import record_terms


def _design_arrays(design: Design, fixed: np.ndarray) -> dict[str, np.ndarray]:
    covariates, seg_start, seg_time = design.kernel_arguments()
    events = dict(zip(("ev_start", "ev_time", "ev_kind", "ev_target", "ev_amount", "ev_length", "ev_ss",
                       "dose_state"), design.event_arguments()))
    return {"fixed": np.ascontiguousarray(fixed, dtype=float), "covariates": covariates, "seg_start": seg_start,
            "seg_time": seg_time, "start": design.start, "time": design.time, "analyte": design.analyte,
            "subject_index": design.subject_index, **events}


@intrinsic
def _read_only(typingctx, array):
    """The same array, typed read-only. The design's arrays reach the kernel read-only from Python
    (`Design` freezes them) but writable from the sampler's log density (pytensor's inputs): typed
    alike, the sampler's compile process loads the kernel the individual fits compiled and cached
    instead of compiling it again (20-30 s for a small model)."""
    if not isinstance(array, numba.types.Array):
        return None

    def codegen(context, builder, signature, args):
        return impl_ret_borrowed(context, builder, signature.return_type, args[0])

    return array.copy(readonly=True)(array), codegen


@lru_cache(maxsize=64)
def _prediction_function(kernel, rtol, atol, max_step, max_steps, control_sens, n_states, est_tuple):
    """A numba function (log_theta, fixed, *design arrays) -> (pred, d pred / d log theta) of one model's
    kernel at fixed solver settings and estimated parameters (their indices `est_tuple`)."""
    est = np.array(est_tuple, dtype=np.int64)
    # integers and flags through arrays: a captured scalar would reach the kernel as a literal
    # type, and a kernel already compiled (and cached) for the individual fits would compile again
    counts = np.array([max_steps, n_states], dtype=np.int64)
    flags = np.array([control_sens])

    @numba.njit
    def predictions(log_theta, fixed, covariates, seg_start, seg_time, start, time, analyte, subject_index,
                    ev_start, ev_time, ev_kind, ev_target, ev_amount, ev_length, ev_ss, dose_state):
        N, K = log_theta.shape
        P = fixed.copy()
        theta = np.exp(log_theta)
        for i in range(N):
            for k in range(K):
                P[i, est[k]] = theta[i, k]
        n_obs = time.shape[0]
        n_events = 1
        for i in range(N):
            n_events = max(n_events, ev_start[i + 1] - ev_start[i])
        pred = np.empty(n_obs)
        jac = np.zeros((n_obs, K))
        kernel(P, _read_only(covariates), _read_only(seg_start), _read_only(seg_time), est, _read_only(start),
               _read_only(time), _read_only(analyte), _read_only(ev_start), _read_only(ev_time), _read_only(ev_kind),
               _read_only(ev_target), _read_only(ev_amount), _read_only(ev_length), _read_only(ev_ss),
               _read_only(dose_state), rtol, atol, max_step, counts[0], flags[0], counts[1], pred, jac,
               np.zeros(N, dtype=np.int64), np.zeros(n_events, np.int64), np.zeros(n_events),
               np.zeros(n_events, np.int64), np.zeros(n_events), np.zeros(n_events, np.int64), np.zeros(n_events),
               np.zeros((n_events, K)), np.zeros((n_events, K)))
        for j in range(n_obs):
            for k in range(K):
                jac[j, k] *= theta[subject_index[j], k]
        return pred, jac

    return predictions


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

    def individual(self, theta: np.ndarray) -> np.ndarray:
        """(N, n_parameters) values: `fixed` with the estimated columns set to theta (N, K)."""
        P = self.fixed.copy()
        P[:, self.est] = theta
        return P

    def values(self, log_theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = np.exp(log_theta)
        pred, dpred = predict_compiled(self.design, self.individual(theta), self.estimated, self.steps)
        return pred, dpred * theta[self.design.subject_index]

    def arrays(self) -> dict[str, np.ndarray]:
        """`fixed` and the design's arrays, named, in the order of `function`'s arguments."""
        return _design_arrays(self.design, self.fixed)

    def function(self):
        """The numba function (log_theta, fixed, *design arrays) -> (pred, d pred / d log theta)."""
        kernel, args = solver_call(self.design, self.steps)
        return _prediction_function(kernel, *args, len(self.design.model.states), tuple(int(e) for e in self.est))

    def compiled(self):
        """A numba function log_theta -> (pred, d pred / d log theta), as `values`."""
        function, arrays = self.function(), tuple(self.arrays().values())

        def predictions(log_theta):
            return function(np.ascontiguousarray(log_theta), *arrays)

        return predictions

    def cache_key(self) -> str:
        """What the compiled predictions depend on besides their inputs: the model's generated
        code, the solver settings and the estimated parameters."""
        kernel, args = solver_call(self.design, self.steps)
        return f"{kernel.py_func.__module__}:{args}:{len(self.design.model.states)}:{self.est.tolist()}"


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
    # typed as `likelihood.pointwise` calls it (inputs read-only, m4 a plain bool), so that
    # record_terms compiles once for the individual fits and the sampler
    record_terms(_read_only(pred), _read_only(y), _read_only(lloq), _read_only(censored), _read_only(error),
                 _read_only(s), _read_only(a), m4 == True, out, d_pred, d_sigma, d_additive)  # noqa: E712
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


#: the design's arrays packed into two (fewer arrays for the sampler to pass: each costs compile time)
REALS = ("fixed", "covariates", "seg_time", "time", "ev_time", "ev_amount", "ev_length", "ev_ss", "lloq")
INTEGERS = ("seg_start", "start", "analyte", "subject_index", "ev_start", "ev_kind", "ev_target", "dose_state",
            "index_s", "index_a", "error")


def pack(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(reals, integers): the arrays of REALS and INTEGERS concatenated; integers starts with a
    header: the lengths of the REALS, of the INTEGERS, the columns of fixed and the shape of covariates."""
    reals = [np.ravel(arrays[name]).astype(float) for name in REALS]
    integers = [np.ravel(arrays[name]).astype(np.int64) for name in INTEGERS]
    header = [len(a) for a in reals] + [len(a) for a in integers]
    header += [arrays["fixed"].shape[1], *arrays["covariates"].shape]
    return (np.ascontiguousarray(np.concatenate(reals)),
            np.ascontiguousarray(np.concatenate([np.array(header, np.int64)] + integers)))


@numba.njit(cache=True)
def _real(reals, header, q):
    o = 0
    for r in range(q):
        o += header[r]
    return reals[o:o + header[q]]  # a 1-d slice: a view, C-contiguous


@numba.njit(cache=True)
def _integer(integers, header, q):
    o = header.shape[0]
    for r in range(q):
        o += header[len(REALS) + r]
    return integers[o:o + header[len(REALS) + q]]


@lru_cache(maxsize=64)
def _log_density_function(predictions, m4: bool):
    """A numba function (log_theta, residual, y, censored, reals, integers) -> (log-likelihood,
    its gradients with respect to log theta and the residual vector); reals, integers: `pack`."""
    n_header = len(REALS) + len(INTEGERS) + 3

    @numba.njit
    def log_density(log_theta, residual, y, censored, reals, integers):
        header = integers[:n_header]
        n_par, n_segments, n_cov = header[n_header - 3], header[n_header - 2], header[n_header - 1]
        fixed = _real(reals, header, 0).reshape((log_theta.shape[0], n_par))
        covariates = _real(reals, header, 1).reshape((n_segments, n_cov))
        seg_time, time, ev_time, ev_amount, ev_length, ev_ss, lloq = (
            _real(reals, header, 2), _real(reals, header, 3), _real(reals, header, 4), _real(reals, header, 5),
            _real(reals, header, 6), _real(reals, header, 7), _real(reals, header, 8))
        seg_start, start, analyte, subject_index, ev_start, ev_kind, ev_target, dose_state = (
            _integer(integers, header, 0), _integer(integers, header, 1), _integer(integers, header, 2),
            _integer(integers, header, 3), _integer(integers, header, 4), _integer(integers, header, 5),
            _integer(integers, header, 6), _integer(integers, header, 7))
        index_s, index_a, error = (_integer(integers, header, 8), _integer(integers, header, 9),
                                   _integer(integers, header, 10))
        pred, jac = predictions(np.ascontiguousarray(log_theta), fixed, covariates, seg_start, seg_time, start,
                                time, analyte, subject_index, ev_start, ev_time, ev_kind, ev_target, ev_amount,
                                ev_length, ev_ss, dose_state)
        total, grad_theta, grad_residual = _log_likelihood(
            pred, jac, subject_index, log_theta.shape[0], index_s, index_a, np.ascontiguousarray(residual),
            np.ascontiguousarray(y), lloq, np.ascontiguousarray(censored), error, m4)
        return np.array(total, dtype=np.float64), grad_theta, grad_residual

    return log_density


class LogLikelihoodOp(Op):
    """log p(y | theta, residual SDs) of every record of the design, with its gradient.

    records: `population.record_arrays` (LLOQ, error model and residual SDs of each record);
    m4: M4 censoring. Inputs: log theta, the residual vector [sigma..., sigma_add...], the
    observed values, their censoring flags, then the two arrays of `data()` (the design and the
    records' residual and LLOQ arrays, `pack`ed), which the PyMC model holds as data."""

    __props__ = ("key",)

    def __init__(self, predictions: Predictions, records: dict, m4: bool):
        self.predictions = predictions
        self.records = {"index_s": np.ascontiguousarray(records["residual_sigma"], dtype=np.int64),
                        "index_a": np.ascontiguousarray(records["residual_additive"], dtype=np.int64),
                        "lloq": np.ascontiguousarray(records["lloq"], dtype=float),
                        "error": np.ascontiguousarray(records["error"], dtype=np.int64)}
        self.m4 = bool(m4)
        self.key = f"{predictions.cache_key()}:m4={self.m4}:{source_digest()}"

    def data(self) -> dict[str, np.ndarray]:
        """The design's and the records' arrays packed (`pack`): the Op's inputs after the first four."""
        return dict(zip(("reals", "integers"), pack({**self.predictions.arrays(), **self.records})))

    def make_node(self, log_theta, sigma, y, censored, *data):
        if len(data) != 2:
            raise TypeError(f"LogLikelihoodOp takes the two arrays of op.data() after (log_theta, sigma, y, "
                            f"censored), not {len(data)}")
        inputs = [pt.as_tensor_variable(log_theta).astype("float64"), pt.as_tensor_variable(sigma).astype("float64"),
                  pt.as_tensor_variable(y).astype("float64"), pt.as_tensor_variable(censored).astype("int64")]
        inputs += [pt.as_tensor_variable(data[0]).astype("float64"), pt.as_tensor_variable(data[1]).astype("int64")]
        return Apply(self, inputs, [pt.dscalar(), pt.dmatrix(), pt.dvector()])

    def function(self):
        """The numba log density (log_theta, residual, y, censored, *data) -> (total, grads)."""
        return _log_density_function(self.predictions.function(), self.m4)

    def perform(self, node, inputs, outputs):
        total, grad_theta, grad_sigma = self.function()(*(np.ascontiguousarray(x) for x in inputs))
        outputs[0][0] = np.asarray(total)
        outputs[1][0] = grad_theta
        outputs[2][0] = grad_sigma

    def connection_pattern(self, node):
        return [[True, True, True]] * len(node.inputs)

    def pullback(self, inputs, outputs, output_grads):
        _, grad_theta, grad_sigma = outputs
        g_total, g_theta, g_sigma = output_grads
        if not (isinstance(g_theta.type, DisconnectedType) and isinstance(g_sigma.type, DisconnectedType)):
            raise NotImplementedError("the gradient outputs of LogLikelihoodOp cannot be differentiated")
        undefined = [grad_undefined(self, i, inputs[i], "data are not differentiable") for i in range(2, len(inputs))]
        if isinstance(g_total.type, DisconnectedType):
            return [pt.zeros_like(inputs[0]), pt.zeros_like(inputs[1]), *undefined]
        return [g_total * grad_theta, g_total * grad_sigma, *undefined]


@register_funcify_and_cache_key(LogLikelihoodOp)
def _numba_log_likelihood(op, node=None, **kwargs):
    key = hashlib.sha256(f"pkpd.LogLikelihoodOp:{op.key}".encode()).hexdigest()
    return op.function(), key
