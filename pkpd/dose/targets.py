"""Dose-selection targets: a metric of one virtual patient's simulated profile against a threshold.

Metrics are the NCA metrics of `pkpd.nca`, computed the way the trial measures them: on the
trials' sampling schedule, with residual error and censoring below the LLOQ. So a simulated
patient is judged by the same rules as an observed one.

Defaults (each configurable; the levels are the probabilities a dose must reach):
- efficacy: B-cell aplasia lasting at least 90 days (aplasia: <= 5 cells/uL or below the LLOQ;
  science.md 3.1);
- safety: peak IL-6 below 100 pg/mL (a cytokine-release proxy: a convention of this tool, not
  a validated cut-off) and IgG nadir above 4 g/L (the usual IgG-replacement threshold,
  science.md 3.2);
- exposure (reported, not required): transgene Cmax and AUC0-28.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import numpy as np

from ..nca import aplasia_metrics, exposure_metrics, nadir_metrics

OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
KINDS = ("efficacy", "safety")
METRICS = {  # metric -> how it is computed from one profile
    "cmax": "exposure", "tmax": "exposure", "auc_0_28": "exposure", "auc_0_90": "exposure",
    "auc_last": "exposure", "clast": "exposure", "tlast": "exposure",
    "aplasia_duration": "aplasia", "aplasia_onset": "aplasia",
    "nadir": "nadir", "nadir_fold_change": "nadir", "t_nadir": "nadir",
}
EXPOSURE_SUMMARY = (("transgene", "cmax"), ("transgene", "auc_0_28"))


@dataclass(frozen=True)
class Target:
    name: str
    analyte: str
    metric: str
    op: str
    threshold: float
    kind: str  # 'efficacy' or 'safety'

    def __post_init__(self):
        if self.op not in OPERATORS:
            raise ValueError(f"target {self.name}: comparison {self.op!r} is not one of {', '.join(OPERATORS)}")
        if self.metric not in METRICS:
            raise ValueError(f"target {self.name}: metric {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.kind not in KINDS:
            raise ValueError(f"target {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")

    @property
    def label(self) -> str:
        return f"{self.analyte} {self.metric} {self.op} {self.threshold:g}"

    def attained(self, values: np.ndarray) -> np.ndarray:
        """Attainment per patient; a missing metric (e.g. no aplasia at all) is not attained."""
        values = np.asarray(values, float)
        with np.errstate(invalid="ignore"):
            return np.isfinite(values) & OPERATORS[self.op](values, self.threshold)

    @classmethod
    def parse(cls, text: str) -> "Target":
        """'NAME:ANALYTE:METRIC>=VALUE:KIND', e.g. 'aplasia:bcells:aplasia_duration>=90:efficacy'."""
        match = re.fullmatch(r"\s*(\w+):(\w+):(\w+)\s*(>=|<=|>|<)\s*([0-9.eE+\-]+):(\w+)\s*", text)
        if not match:
            raise ValueError(f"target {text!r} is not NAME:ANALYTE:METRIC(>=|>|<=|<)VALUE:KIND, e.g. "
                             "aplasia:bcells:aplasia_duration>=90:efficacy")
        name, analyte, metric, op, value, kind = match.groups()
        return cls(name, analyte, metric, op, float(value), kind)


DEFAULT_TARGETS = (
    Target("aplasia_90d", "bcells", "aplasia_duration", ">=", 90.0, "efficacy"),
    Target("il6_peak", "il6", "cmax", "<", 100.0, "safety"),
    Target("igg_nadir", "igg", "nadir", ">", 4.0, "safety"),
)


def profile_metrics(times: np.ndarray, values: np.ndarray, censored: np.ndarray, lloq: np.ndarray,
                    kind: str) -> dict:
    """NCA metrics of one profile (times sorted; a time < 0 is the pre-infusion baseline)."""
    pre, post = times < 0, times >= 0
    if kind == "exposure":
        return exposure_metrics(times[post], values[post], censored[post], terminal=False)
    late = times > 0
    if kind == "aplasia":
        return aplasia_metrics(times[late], values[late], censored[late])
    baseline = float(values[pre][-1]) if pre.any() else np.nan
    return nadir_metrics(times[late], values[late], censored[late], lloq[late], baseline)
