"""How far a quasi-steady-state reduction is from the ODEs it replaces.

A module may hold fast states at quasi-steady state (`Module.approximates` names the module
with their ODEs: `cytokines_qss` approximates `cytokines`, whose half-lives of minutes make the
system stiff). The reduction is exact only once the fast states have caught up with their drive:
samples in the hours after a dose, or while the drive changes within a half-life, are not at
quasi-steady state. `check_reduction` predicts every record with both models (LSODA, the fast
states' elimination rates at their typical values) and reports, per analyte, the largest
difference and the records it cannot neglect: differences above a tenth of the analyte's
residual SD (log scale or proportional; for additive error, a tenth of the additive SD).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..data.cohort import Cohort
from ..models import Model, full_form
from .design import Design
from .solve import predict_reference

#: a reduction's difference is negligible below this fraction of the analyte's residual SD
FRACTION_OF_RESIDUAL_SD = 0.1


@dataclass(frozen=True)
class ReductionCheck:
    reduced: str                       # the fitted model's name
    full: str                          # the model with the ODEs it approximates
    time_unit: str                     # of the times in `worst`
    max_difference: dict[str, float]   # per analyte: largest |log ratio| (absolute difference for additive error)
    tolerance: dict[str, float]        # per analyte: FRACTION_OF_RESIDUAL_SD x its residual SD
    over: dict[str, int]               # per analyte: records above the tolerance
    records: dict[str, int]            # per analyte: records compared
    worst: list[dict]                  # up to five records above the tolerance: subject, analyte, time, difference

    @property
    def ok(self) -> bool:
        return not any(self.over.values())

    def message(self) -> str:
        over = {a: n for a, n in self.over.items() if n}
        if not over:
            worst = max(self.max_difference, key=lambda a: self.max_difference[a] / self.tolerance[a])
            return (f"quasi-steady state ({self.reduced}) vs the ODEs ({self.full}) at the posterior median: every "
                    f"record within a tenth of its residual SD (largest: {worst} "
                    f"{self.max_difference[worst]:.1e})")
        parts = ", ".join(f"{a} {n} of {self.records[a]} (max {self.max_difference[a]:.2f}, tolerance "
                          f"{self.tolerance[a]:.2f})" for a, n in over.items())
        times = sorted({round(w["time"], 3) for w in self.worst})
        return (f"quasi-steady state ({self.reduced}) vs the ODEs ({self.full}) at the posterior median: records "
                f"not at quasi-steady state: {parts}; e.g. at t = {', '.join(f'{t:g}' for t in times)} {self.time_unit}: fit "
                f"{self.full} for those samples' dynamics, or exclude them (MDV) if they are not needed")

    def to_dict(self) -> dict:
        return asdict(self)


def check_reduction(model: Model, cohort: Cohort, P: np.ndarray, analytes=None) -> ReductionCheck | None:
    """Compare `model` with its full form (pkpd.models.full_form) at every record of `cohort`:
    P (N, n_parameters) are the subjects' parameters in model.parameter_names order; the full
    form's further parameters take their typical values. None when no module of `model` is a
    quasi-steady-state reduction."""
    full = full_form(model)
    if full is None:
        return None
    reduced_design = Design(model, cohort, analytes=analytes)
    full_design = Design(full, cohort, analytes=analytes)
    if not np.array_equal(reduced_design.records, full_design.records):
        raise AssertionError("the reduced and the full model select different records")  # same cohort, analytes
    column = {n: i for i, n in enumerate(model.parameter_names)}
    P_full = np.column_stack([P[:, column[n]] if n in column else np.full(len(P), full.parameter(n).typical)
                              for n in full.parameter_names])
    a = predict_reference(reduced_design, np.asarray(P, float).T, rtol=1e-8, atol=1e-12)
    b = predict_reference(full_design, P_full.T, rtol=1e-8, atol=1e-12)
    names = np.asarray(reduced_design.analyte_names)[reduced_design.analyte]
    subjects = np.asarray(reduced_design.subjects, dtype=object)[reduced_design.subject_index]
    max_difference, tolerance, over, records, worst = {}, {}, {}, {}, []
    for analyte in reduced_design.analyte_names:
        rows = names == analyte
        if not rows.any():
            continue
        obs = model.observations[analyte]
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.abs(np.log(a[rows] / b[rows])) if obs.has_sigma else np.abs(a[rows] - b[rows])
        d = np.where(np.isfinite(d), d, np.nan)
        tol = FRACTION_OF_RESIDUAL_SD * (obs.sigma if obs.has_sigma else obs.additive)
        above = np.flatnonzero(d > tol)
        max_difference[analyte] = float(np.nanmax(d)) if np.isfinite(d).any() else float("nan")
        tolerance[analyte], over[analyte], records[analyte] = float(tol), int(above.size), int(rows.sum())
        for j in above[np.argsort(-d[above])][:5]:
            worst.append({"subject": str(subjects[rows][j]), "analyte": analyte,
                          "time": float(reduced_design.time[rows][j]), "difference": float(d[j])})
    worst = sorted(worst, key=lambda w: -w["difference"] / tolerance[w["analyte"]])[:5]
    return ReductionCheck(model.name, full.name, model.time_unit, max_difference, tolerance, over, records, worst)
