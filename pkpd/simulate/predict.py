"""Model predictions at the records of a Cohort (all subjects solved together)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ..data.cohort import Cohort
from ..models import Model
from .compiled import Tolerances, predict_compiled
from .design import Design
from .solve import SolverError, parameter_matrix, predict_reference


def individual_matrix(model: Model, cohort: Cohort, params: pd.DataFrame | Mapping | None) -> np.ndarray:
    """(n_parameters, N) individual values: columns of `params` (indexed by subject), or typical."""
    n = len(cohort.subjects)
    if params is None:
        return parameter_matrix(model, None, n)
    if isinstance(params, pd.DataFrame):
        missing = sorted(set(cohort.subject_ids) - set(params.index.astype(str)))
        if missing:
            raise ValueError(f"individual parameters are missing for subject(s) {', '.join(missing[:5])}")
        frame = params.copy()
        frame.index = frame.index.astype(str)
        frame = frame.loc[cohort.subject_ids]
        return parameter_matrix(model, {c: frame[c].to_numpy(float) for c in frame.columns
                                        if c in model.parameter_names}, n)
    return parameter_matrix(model, dict(params), n)


def predict(model: Model, cohort: Cohort, params: pd.DataFrame | Mapping | None = None,
            steps: Tolerances | None = None, **solver) -> pd.Series:
    """Predicted value at every observation record of `cohort` (index aligned with
    `cohort.observations`); NaN for analytes the model does not predict and for excluded (MDV)
    records. steps None: the reference solver (LSODA through every event; `solver`: rtol,
    atol); a `Tolerances`: the compiled solver the fits use (for large virtual populations:
    10,000 antigen_driven subjects in 1.6 s against 10.5 s through `simulate`)."""
    obs = cohort.observations
    out = pd.Series(np.nan, index=obs.index, name="pred")
    if obs.empty or not set(model.analytes) & set(obs["analyte"].unique()):  # unique: not a loop over rows
        return out
    design = Design(model, cohort)
    P = individual_matrix(model, cohort, params)
    if steps is None:
        out.iloc[design.records] = predict_reference(design, P, **solver)
        return out
    if solver:
        raise ValueError(f"{', '.join(solver)}: options of the reference solver; with steps= give the compiled "
                         "solver's tolerances as steps=Tolerances(rtol=..., atol=...)")
    if not isinstance(steps, Tolerances):
        raise TypeError(f"steps must be pkpd.simulate.compiled.Tolerances or None, not {type(steps).__name__}")
    pred, _ = predict_compiled(design, np.ascontiguousarray(P.T), [], steps)
    failed = ~np.isfinite(pred)
    if failed.any():
        who = sorted({design.subjects[i] for i in design.subject_index[failed]})
        raise SolverError(f"model {model.name}: the compiled solver found no finite prediction for subject(s) "
                          f"{', '.join(who[:5])}{' ...' if len(who) > 5 else ''} (more than steps.max_steps = "
                          f"{steps.max_steps} steps, or a right-hand side that is not finite); simulate them with "
                          "the reference solver (steps=None) or raise max_steps")
    out.iloc[design.records] = pred
    return out
