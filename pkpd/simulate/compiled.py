"""Predictions and their parameter derivatives from the compiled solver.

This is the sampler's inner loop: all subjects, all records, one call into numba: an adaptive
embedded Runge-Kutta pair with forward sensitivities (`Tolerances`), doses, resets and
covariate changes as events (`pkpd.simulate.events`). Its accuracy is not assumed: `pkpd.fit`
compares it with LSODA at posterior draws.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..models.compiled import TABLEAUS, compiled_functions
from .design import Design


#: subjects below which one call solves them all in the calling thread (virtual populations
#: for dose selection and trial simulation are split over the cores)
SUBJECTS_PER_THREAD = 2000


@dataclass(frozen=True)
class Tolerances:
    """Adaptive embedded Runge-Kutta (`method`: "dopri5", "bs3" or "cashkarp") with a PI
    step-size controller; the sensitivities ride along the accepted steps.

    Each state's local error is held below rtol*|y| + atol*peak, peak being the largest |y| of
    that state so far on the subject's path: relative accuracy (predictions are fitted on the log
    scale) down to atol/rtol of the peak (B cells in aplasia). `control_sensitivities` puts the
    sensitivities under the same control. Steps are at most `max_step` days and land exactly on
    every observation time, or with `interpolate` only on events, covariate changes and each
    subject's last record, the records between them interpolated (cubic Hermite from the states,
    sensitivities and their derivatives at both ends of the step that passes them: fewer steps
    where records are dense, an interpolation error of the order of the tolerance; used for
    virtual patients after their check against the fit's own tolerances). A subject needing more
    than `max_steps` step attempts gets NaN predictions (which the likelihood rejects) rather than
    an endless loop.

    The defaults keep antigen_driven(+immunoglobulins) predictions within 5e-4 of LSODA on the
    log scale at random individual parameters, with ~110 steps per subject (Cash-Karp needed
    fewer steps than Dormand-Prince for the same accuracy there). `max_step` is in the model's
    time unit."""

    rtol: float = 3e-5
    atol: float = 3e-8
    method: str = "cashkarp"
    max_step: float = 30.0
    max_steps: int = 20000
    control_sensitivities: bool = False
    interpolate: bool = False

    def __post_init__(self):
        if self.method not in TABLEAUS:
            raise ValueError(f"unknown method {self.method!r}: one of {', '.join(TABLEAUS)}")
        if not (self.rtol > 0 and self.atol >= 0 and self.max_step > 0 and self.max_steps > 0):
            raise ValueError("Tolerances need rtol > 0, atol >= 0, max_step > 0 and max_steps > 0")


def scratch(n_events: int, K: int) -> tuple:
    """Work arrays of the kernels for subjects with at most n_events events and K sensitivities:
    event order and times, and the running infusions (on, end, target, rate, d rate, d end)."""
    m = max(n_events, 1)
    return (np.zeros(m, np.int64), np.zeros(m), np.zeros(m, np.int64), np.zeros(m), np.zeros(m, np.int64),
            np.zeros(m), np.zeros((m, K)), np.zeros((m, K)))


def predict_compiled(design: Design, P: np.ndarray, estimated: list[str] | None = None,
                     steps: "Tolerances | None" = None, n_steps: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(pred (n_obs,), dpred (n_obs, K)): predictions at the design's records and their
    derivatives with respect to the natural values of the `estimated` parameters.

    P: (N, n_parameters) individual parameter values in model.parameter_names order.
    steps: the adaptive solver's `Tolerances` (default Tolerances()). n_steps: optional (N,)
    int64 array to which each subject's accepted steps are added."""
    model = design.model
    steps = steps or Tolerances()
    est = np.array([model.parameter_names.index(n) for n in (estimated or [])], dtype=np.int64)
    est.setflags(write=False)  # as in the sampler's compiled log density: one kernel signature
    pred = np.empty(design.n_obs)
    dpred = np.zeros((design.n_obs, len(est)))
    if n_steps is None:
        n_steps = np.zeros(len(design.subjects), dtype=np.int64)
    kernel, args = solver_call(design, steps)
    P = np.ascontiguousarray(P, dtype=float)
    covariates, seg_start, seg_time = design.kernel_arguments()
    ev_start, *events = design.event_arguments()

    def solve(first: int, last: int) -> None:
        # subjects first..last-1: their rows of P, and the offsets of their records, segments and
        # events into the full arrays (the kernel reads and writes only those)
        part = slice(first, last + 1)
        kernel(P[first:last], covariates, seg_start[part], seg_time, est, design.start[part], design.time,
               design.analyte, ev_start[part], *events, *args, len(model.states), pred, dpred,
               n_steps[first:last], *scratch(design.max_events, len(est)))

    N = P.shape[0]
    workers = min(os.cpu_count() or 1, N // SUBJECTS_PER_THREAD)
    if workers <= 1:
        solve(0, N)
    else:  # the kernel releases the GIL: subjects in blocks, one thread per core
        bounds = np.linspace(0, N, workers + 1).astype(int)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(solve, bounds[:-1], bounds[1:]))
    return pred, dpred


def solver_call(design: Design, steps: Tolerances):
    """(kernel, solver arguments) for the compiled kernel of design.model: the kernel is called
    kernel(P, *design.kernel_arguments(), est, start, time, analyte, *design.event_arguments(),
    *arguments, n_states, pred, dpred, n_steps, *scratch(...))."""
    if not isinstance(steps, Tolerances):
        raise TypeError(f"steps must be pkpd.simulate.compiled.Tolerances, not {type(steps).__name__}")
    fns = compiled_functions(design.model)
    kernel = f"predict_all{'_dense' if steps.interpolate else ''}_{steps.method}"
    return getattr(fns, kernel), (float(steps.rtol), float(steps.atol), float(steps.max_step), int(steps.max_steps),
                                  bool(steps.control_sensitivities))
