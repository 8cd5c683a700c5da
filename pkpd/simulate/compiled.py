"""Predictions and their parameter derivatives from the compiled fixed-step solver.

This is the sampler's inner loop: all subjects, all records, one call into numba. Its accuracy
is not assumed: `solver_error` compares it with the adaptive LSODA solution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.cohort import Cohort
from ..models import Model
from ..models.compiled import compiled_functions
from .predict import cohort_covariates


@dataclass(frozen=True)
class StepSizes:
    """RK4 steps: `early` until `switch` (expansion and depletion), then `late` (days).

    The defaults keep the error of antigen_driven predictions below 1e-3 on the log scale
    (residual SDs are 0.3-0.5); `pkpd.fit` re-checks it against LSODA at posterior draws."""

    early: float = 0.1
    late: float = 2.0
    switch: float = 20.0


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
                     steps: StepSizes = StepSizes()) -> tuple[np.ndarray, np.ndarray]:
    """(pred (n_obs,), dpred (n_obs, K)): predictions at the design's records and their
    derivatives with respect to the natural values of the `estimated` parameters.

    P: (N, n_parameters) individual parameter values in model.parameter_names order."""
    model = design.model
    fns = compiled_functions(model)
    est = np.array([model.parameter_names.index(n) for n in (estimated or [])], dtype=np.int64)
    pred = np.empty(design.n_obs)
    dpred = np.zeros((design.n_obs, len(est)))
    fns.predict_all(np.ascontiguousarray(P, dtype=float), design.covariates, est, design.start,
                    design.time, design.analyte, steps.early, steps.late, steps.switch,
                    len(model.states), pred, dpred)
    return pred, dpred
