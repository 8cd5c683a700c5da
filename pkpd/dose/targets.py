"""Dose-selection targets: a metric of one virtual patient's simulated profile against a threshold.

Metrics are the NCA metrics of `pkpd.nca`, computed the way the trial measures them: on the
fitted data's sampling schedule (or the one given), with residual error and censoring below
the LLOQ. So a simulated patient is judged by the same rules as an observed one. Partial AUCs
are named with their window and unit (auc_0_28d, auc_0_24h); after repeated doses auc_tau,
cmax_ss and cmin_ss cover the last interval.

Defaults (each configurable; the levels are the probabilities a dose must reach):
- efficacy: B-cell aplasia lasting at least 90 days (aplasia: <= 5 cells/uL or below the LLOQ;
  Mackensen et al., Nat Med 2022: B cells returned after 110 +/- 32 days);
- safety: peak IL-6 below 100 pg/mL (a cytokine-release proxy: a convention of this tool, not
  a validated cut-off) and IgG nadir above 4 g/L (the usual IgG-replacement threshold);
- exposure (reported, not required): Cmax and the first partial AUC of each fitted analyte
  of cellular kinetics (transgene) or of any non-CAR-T analyte.
For a model other than the CAR-T ones give the targets (`--target`).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..nca import aplasia_metrics, exposure_metrics, nadir_metrics, steady_state_metrics

OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
KINDS = ("efficacy", "safety")
METRICS = {  # metric -> how it is computed from one profile (and any auc_0_<window>: exposure)
    "cmax": "exposure", "tmax": "exposure", "auc_last": "exposure", "clast": "exposure", "tlast": "exposure",
    "auc_inf": "exposure", "auc_tau": "steady", "cmax_ss": "steady", "cmin_ss": "steady",
    "aplasia_duration": "aplasia", "aplasia_onset": "aplasia",
    "nadir": "nadir", "nadir_fold_change": "nadir", "t_nadir": "nadir",
}
_WINDOW = re.compile(r"auc_0_([0-9p]+)(min|h|d|w)")


def metric_kind(metric: str) -> str | None:
    """How `metric` is computed from a profile ('exposure', 'steady', 'aplasia', 'nadir'), or None."""
    if _WINDOW.fullmatch(metric):
        return "exposure"
    return METRICS.get(metric)


def window_of(metric: str) -> str | None:
    """'auc_0_28d' -> '28d'; None for other metrics."""
    match = _WINDOW.fullmatch(metric)
    return f"{match.group(1).replace('p', '.')}{match.group(2)}" if match else None


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
        if metric_kind(self.metric) is None:
            raise ValueError(f"target {self.name}: metric {self.metric!r} is not one of {', '.join(METRICS)} or "
                             "auc_0_<window> (auc_0_24h, auc_0_28d)")
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
        match = re.fullmatch(r"\s*(\w+):(\w+):(\w+)\s*(>=|<=|>|<)\s*([0-9.eE+\-]+):(\w+)\s*", str(text))
        if not match:
            raise ValueError(f"target {text!r} is not NAME:ANALYTE:METRIC(>=|>|<=|<)VALUE:KIND, e.g. "
                             "aplasia:bcells:aplasia_duration>=90:efficacy")
        name, analyte, metric, op, value, kind = match.groups()
        try:
            threshold = float(value)
        except ValueError:
            raise ValueError(f"target {text!r}: {value!r} is not a number") from None
        if not np.isfinite(threshold):
            raise ValueError(f"target {text!r}: the threshold must be finite")
        return cls(name, analyte, metric, op, threshold, kind)


DEFAULT_TARGETS = (
    Target("aplasia_90d", "bcells", "aplasia_duration", ">=", 90.0, "efficacy"),
    Target("il6_peak", "il6", "cmax", "<", 100.0, "safety"),
    Target("igg_nadir", "igg", "nadir", ">", 4.0, "safety"),
)


def profile_metrics(times: np.ndarray, values: np.ndarray, censored: np.ndarray, lloq: np.ndarray,
                    kind: str, windows: Sequence[tuple[float, str]] = (), dose_times: Sequence[float] = (0.0,),
                    interval: float | None = None) -> dict:
    """NCA metrics of one profile (times sorted, since the first dose; a time < 0 is the
    pre-dose baseline). windows: (end, name) of partial AUCs (pkpd.nca.window_names)."""
    pre, post = times < 0, times >= 0
    if kind == "exposure":
        return exposure_metrics(times[post], values[post], censored[post], terminal=False, windows=windows)
    if kind == "steady":
        return steady_state_metrics(times[post], values[post], censored[post], dose_times, interval)
    late = times > 0
    if kind == "aplasia":
        return aplasia_metrics(times[late], values[late], censored[late])
    baseline = float(values[pre][-1]) if pre.any() else np.nan
    return nadir_metrics(times[late], values[late], censored[late], lloq[late], baseline)
