"""Toxicity linked to the PK/PD model: the grade of an adverse event (CRS, ASTCT grades 1-4) as a
cumulative-logit function of a model-predicted exposure, and the DLT it implies.

    logit P(grade >= g | signal) = a_g + slope * log10(signal / reference),   a_1 > a_2 > a_3

The signal is a metric of the virtual patient's simulated profile (by default the peak IL-6 on
the trial's schedule, pkpd.dose.targets metrics). A DLT within the window is an event of grade
>= `dlt_grade`, or another DLT (cytopenia, infection, ICANS) at a background probability. Every
parameter has a prior that a user reads in `describe()` and replaces (`ToxicityModel(...)`,
`pkpd trial simulate --tox-prior`); without adverse-event records the parameters stay at their
priors and every output says so.

Default priors (a convention of this tool, to be replaced by a sponsor's data):
- at a peak IL-6 of 30 pg/mL (about the example cohort's geometric mean) CRS of any grade in about
  two thirds of patients, grade >= 2 in about 7%, grade >= 3 in about 1%: CD19 CAR-T in autoimmune
  disease had mostly grade-1 CRS and no grade >= 3 (Mackensen A et al., Nat Med 2022;28:2124;
  Muller F et al., N Engl J Med 2024;390:687);
- CRS severity rises with peak IL-6 (Teachey DT et al., Cancer Discov 2016;6:664; Hay KA et al.,
  Blood 2017;130:2295): a slope of 1.5 (SD 0.75) per log10 unit, an odds ratio of about 4.5 per
  10-fold higher peak;
- other DLTs at a background probability Beta(1, 49) (mean 2%);
- a DLT's onset uniform over days 1-8 after infusion (CRS onset in SLE), which only the
  time-to-event designs read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ToxicityModel:
    event: str = "CRS"
    analyte: str = "il6"
    metric: str = "cmax"
    reference: float = 30.0                      # signal value at which the intercepts apply
    unit: str = "pg/mL"
    # Normal(mean, sd) of logit P(grade >= g) at the reference, g = 1, 2, 3, ...
    intercepts: tuple[tuple[float, float], ...] = ((0.7, 0.6), (-2.6, 0.8), (-4.6, 1.0))
    slope: tuple[float, float] = (1.5, 0.75)     # Normal(mean, sd) per log10 unit of the signal
    dlt_grade: int = 3
    background: tuple[float, float] = (1.0, 49.0)  # Beta(a, b) probability of another DLT
    onset_days: tuple[float, float] = (1.0, 8.0)   # a DLT's onset, uniform (CRS in SLE: days 1-8)
    records: str = "crs"                         # the analyte of the event's graded records
    fitted: bool = False                         # True once fitted to adverse-event records (fit_toxicity)
    summary: str = ""                            # how it was fitted
    converged: bool | None = None
    posterior: dict | None = field(default=None, compare=False, repr=False)  # draws of intercepts, slope

    def __post_init__(self):
        means = [m for m, _ in self.intercepts]
        if len(means) < 1 or any(sd <= 0 for _, sd in self.intercepts) or any(np.diff(means) >= 0):
            raise ValueError(f"intercepts must be (mean, sd > 0) pairs with decreasing means, one per grade "
                             f"threshold (grade >= 1, >= 2, ...), got {self.intercepts}")
        if not 1 <= self.dlt_grade <= len(self.intercepts):
            raise ValueError(f"dlt_grade must be a grade 1..{len(self.intercepts)} that the intercepts cover, "
                             f"got {self.dlt_grade}")
        if not (self.reference > 0 and self.slope[1] > 0 and min(self.background) > 0):
            raise ValueError("reference must be > 0, the slope's sd > 0, and the background's Beta parameters > 0")
        if not 0 <= self.onset_days[0] <= self.onset_days[1]:
            raise ValueError(f"onset_days must be (earliest, latest) days with 0 <= earliest <= latest, got {self.onset_days}")

    @property
    def signal(self) -> tuple[str, str]:
        return self.analyte, self.metric

    def draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """n draws of the parameters: intercepts (n, G) in decreasing order and slope (n,) from the
        posterior when fitted, else from the priors (the intercepts sorted: the order statistics
        of the independent normal priors); background (n,) from its prior."""
        if self.posterior is not None:
            pick = rng.integers(0, len(self.posterior["slope"]), n)
            intercepts, slope = self.posterior["intercepts"][pick], self.posterior["slope"][pick]
        else:
            a = np.column_stack([rng.normal(m, sd, n) for m, sd in self.intercepts])
            intercepts, slope = -np.sort(-a, axis=1), rng.normal(*self.slope, n)
        return {"intercepts": intercepts, "slope": slope, "background": rng.beta(*self.background, n)}

    def grade_probabilities(self, signal: np.ndarray, parameters: dict[str, np.ndarray]) -> np.ndarray:
        """P(grade >= g) (..., G) for signal values (n, ...) under parameter draws of length n. A
        missing or non-positive signal (censored below the LLOQ) counts as the LLOQ-free floor of
        1/100 of the reference."""
        signal = np.asarray(signal, float)
        x = np.log10(np.where(np.isfinite(signal) & (signal > 0), signal, self.reference / 100) / self.reference)
        a = parameters["intercepts"]
        ones = (1,) * (x.ndim - 1)
        eta = a.reshape((len(a),) + ones + (a.shape[1],)) + (parameters["slope"].reshape((-1,) + ones) * x)[..., None]
        return 1 / (1 + np.exp(-eta))

    def dlt_probability(self, signal: np.ndarray, parameters: dict[str, np.ndarray]) -> np.ndarray:
        """P(DLT) per patient: grade >= dlt_grade, or another DLT at the background probability."""
        severe = self.grade_probabilities(signal, parameters)[..., self.dlt_grade - 1]
        background = parameters["background"].reshape((-1,) + (1,) * (severe.ndim - 1))
        return 1 - (1 - severe) * (1 - background)

    def describe(self) -> str:
        grades = "; ".join(f"logit P({self.event} grade >= {g + 1}) ~ Normal({m:g}, {sd:g}) "
                           f"(median {1 / (1 + math.exp(-m)):.3f})" for g, (m, sd) in enumerate(self.intercepts))
        status = (f"of the grades {self.summary}" + ("" if self.converged else " (NOT converged: read with care)")
                  + "; the background DLT probability at its prior"
                  if self.fitted else "at their priors: no adverse-event records were fitted")
        return (f"{self.event} on {self.analyte} {self.metric} ({self.unit}), at {self.reference:g} {self.unit}, "
                f"priors: {grades}; slope ~ Normal({self.slope[0]:g}, {self.slope[1]:g}) per log10 unit; DLT = grade >= "
                f"{self.dlt_grade} or another DLT with probability ~ Beta({self.background[0]:g}, "
                f"{self.background[1]:g}). Parameters {status}.")
