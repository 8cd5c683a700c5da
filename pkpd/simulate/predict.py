"""Model predictions at the records of a Cohort (all subjects solved together)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ..data.cohort import Cohort
from ..models import Model
from .design import Design
from .solve import parameter_matrix, predict_reference


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
            **solver) -> pd.Series:
    """Predicted value at every observation record of `cohort` (index aligned with
    `cohort.observations`), by the reference solver (LSODA through every event; `solver`:
    rtol, atol); NaN for analytes the model does not predict and for excluded (MDV) records."""
    obs = cohort.observations
    out = pd.Series(np.nan, index=obs.index, name="pred")
    if obs.empty or not set(model.analytes) & set(obs["analyte"]):
        return out
    design = Design(model, cohort)
    P = individual_matrix(model, cohort, params)
    out.iloc[design.records] = predict_reference(design, P, **solver)
    return out
