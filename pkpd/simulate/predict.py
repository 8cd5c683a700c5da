"""Model predictions at the records of a Cohort (all subjects solved together)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ..data.cohort import Cohort
from ..models import Model
from .solve import covariate_matrix, parameter_matrix, solve


def cohort_covariates(cohort: Cohort) -> np.ndarray:
    """Model covariates (dose in CAR+ cells, ld, bcma, cd20, weight) in subject order.

    The dose is the subject's first infusion (CAR-T is a single infusion; pkpd models start
    at it). Unknown lymphodepletion counts as none; unknown weight as 70 kg (only cells/kg
    doses need it, and the reader refuses those without a weight)."""
    subjects = cohort.subjects
    first = cohort.doses.sort_values("time", kind="stable").groupby("subject")["cells"].first()
    product = subjects["product"].astype(object).fillna("").astype(str).str.upper()
    ld = subjects["lymphodepletion"].astype("boolean").fillna(False).astype(bool)
    weight = subjects["weight"].astype(float).fillna(70.0)
    return covariate_matrix(len(subjects), dose=first.reindex(subjects.index).fillna(0.0).to_numpy(),
                            ld=ld.to_numpy(float), bcma=product.str.contains("BCMA").to_numpy(float),
                            cd20=product.str.contains("CD20").to_numpy(float), weight=weight.to_numpy())


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
    `cohort.observations`); NaN for analytes the model does not predict."""
    obs = cohort.observations
    out = pd.Series(np.nan, index=obs.index, name="pred")
    analytes = [a for a in model.analytes if a in set(obs["analyte"])]
    if not analytes or obs.empty:
        return out
    P = individual_matrix(model, cohort, params)
    C = cohort_covariates(cohort)
    times = np.unique(obs["time"].to_numpy(float))
    solution = solve(model, times, P, C, analytes=analytes, **solver)
    subject_index = pd.Index(cohort.subject_ids).get_indexer(obs["subject"])
    time_index = np.searchsorted(times, obs["time"].to_numpy(float))
    for analyte in analytes:
        rows = (obs["analyte"] == analyte).to_numpy()
        out[rows] = solution.values[analyte][time_index[rows], subject_index[rows]]
    return out
