"""Predictions and their parameter derivatives from the compiled solvers.

This is the sampler's inner loop: all subjects, all records, one call into numba. Two solvers:
fixed-step RK4 (`StepSizes`, the default) and an adaptive embedded Runge-Kutta pair
(`Tolerances`). Their accuracy is not assumed: `pkpd.fit` compares them with LSODA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.cohort import Cohort
from ..models import Model
from ..models.compiled import TABLEAUS, compiled_functions
from .predict import cohort_covariates


@dataclass(frozen=True)
class StepSizes:
    """RK4 steps: `early` until `switch` (expansion and depletion), then `late` (days).

    The defaults keep the error of antigen_driven predictions below 1e-3 on the log scale
    (residual SDs are 0.3-0.5); `pkpd.fit` re-checks it against LSODA at posterior draws."""

    early: float = 0.1
    late: float = 2.0
    switch: float = 20.0


@dataclass(frozen=True)
class Tolerances:
    """Adaptive embedded Runge-Kutta (`method`: "dopri5", "bs3" or "cashkarp") with a PI
    step-size controller; the sensitivities ride along the accepted steps.

    Each state's local error is held below rtol*|y| + atol*peak, peak being the largest |y| of
    that state so far on the subject's path: relative accuracy (predictions are fitted on the log
    scale) down to atol/rtol of the peak (B cells in aplasia). `control_sensitivities` puts the
    sensitivities under the same control. Steps are at most `max_step` days and land exactly on
    every observation time; a subject needing more than `max_steps` step attempts gets NaN
    predictions (which the likelihood rejects) rather than an endless loop.

    The defaults keep antigen_driven(+immunoglobulins) predictions within 5e-4 of LSODA on the
    log scale at random individual parameters, with ~110 steps per subject (Cash-Karp needed
    fewer steps than Dormand-Prince for the same accuracy there)."""

    rtol: float = 3e-5
    atol: float = 3e-8
    method: str = "cashkarp"
    max_step: float = 30.0
    max_steps: int = 20000
    control_sensitivities: bool = False

    def __post_init__(self):
        if self.method not in TABLEAUS:
            raise ValueError(f"unknown method {self.method!r}: one of {', '.join(TABLEAUS)}")
        if not (self.rtol > 0 and self.atol >= 0 and self.max_step > 0 and self.max_steps > 0):
            raise ValueError("Tolerances need rtol > 0, atol >= 0, max_step > 0 and max_steps > 0")


Solver = StepSizes | Tolerances


class Design:
    """The records of a cohort as arrays, sorted by subject and time, for the compiled solver."""

    def __init__(self, model: Model, cohort: Cohort, analytes=None):
        obs = cohort.observations
        wanted = set(analytes or model.analytes)
        keep = ~obs["mdv"] & obs["analyte"].isin(wanted & set(model.analytes))
        subject_pos = pd.Index(cohort.subject_ids).get_indexer(obs["subject"])
        frame = obs[keep].assign(_s=subject_pos[keep.to_numpy()])
        frame = frame.sort_values(["_s", "time"], kind="stable")
        self.model = model
        self.subjects = cohort.subject_ids
        self.records = frame.index.to_numpy()  # positions in cohort.observations
        self.subject_index = frame["_s"].to_numpy()
        self.time = frame["time"].to_numpy(float)
        self.analyte_names = list(model.analytes)
        self.analyte = np.array([self.analyte_names.index(a) for a in frame["analyte"]], dtype=np.int64)
        self.value = frame["value"].to_numpy(float)
        self.lloq = frame["lloq"].to_numpy(float)
        self.censored = frame["censored"].to_numpy(np.int64)
        counts = np.bincount(self.subject_index, minlength=len(self.subjects))
        self.start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.covariates = np.ascontiguousarray(cohort_covariates(cohort).T)  # (N, n_cov)

    @property
    def n_obs(self) -> int:
        return len(self.time)


def predict_compiled(design: Design, P: np.ndarray, estimated: list[str] | None = None,
                     steps: Solver = StepSizes(), n_steps: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(pred (n_obs,), dpred (n_obs, K)): predictions at the design's records and their
    derivatives with respect to the natural values of the `estimated` parameters.

    P: (N, n_parameters) individual parameter values in model.parameter_names order.
    steps: `StepSizes` (fixed-step RK4) or `Tolerances` (adaptive). n_steps: optional (N,) int64
    array to which the adaptive solver adds each subject's accepted steps."""
    model = design.model
    est = np.array([model.parameter_names.index(n) for n in (estimated or [])], dtype=np.int64)
    pred = np.empty(design.n_obs)
    dpred = np.zeros((design.n_obs, len(est)))
    kernel, args = solver_call(design, steps)
    if n_steps is None and isinstance(steps, Tolerances):
        n_steps = np.zeros(len(design.subjects), dtype=np.int64)
    extra = () if isinstance(steps, StepSizes) else (n_steps,)
    kernel(np.ascontiguousarray(P, dtype=float), design.covariates, est, design.start, design.time,
           design.analyte, *args, len(model.states), pred, dpred, *extra)
    return pred, dpred


def solver_call(design: Design, steps: Solver):
    """(kernel, solver arguments) for the compiled kernel of design.model: the kernel is called
    kernel(P, C, est, start, time, analyte, *arguments, n_states, pred, dpred[, n_steps]), the
    adaptive one with the trailing n_steps (N,) int64 counter."""
    fns = compiled_functions(design.model)
    if isinstance(steps, StepSizes):
        return fns.predict_all, (float(steps.early), float(steps.late), float(steps.switch))
    if isinstance(steps, Tolerances):
        return getattr(fns, f"predict_all_{steps.method}"), (
            float(steps.rtol), float(steps.atol), float(steps.max_step), int(steps.max_steps),
            bool(steps.control_sensitivities))
    raise TypeError(f"steps must be StepSizes or Tolerances, not {type(steps).__name__}")
