"""Operating characteristics of a design on fixed true DLT probabilities, by simulation: the
probability that each dose is selected (or none), patients and DLTs per dose, each with its
Monte Carlo SE."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .selection import STOP
from .runs import DAYS_PER_MONTH, run_cohorts, run_time_to_event


@dataclass(frozen=True)
class TrialOutcome:
    n: np.ndarray         # patients per dose
    y: np.ndarray         # DLTs per dose
    selected: int         # dose index, or -1 (none)
    stopped_early: bool   # stopped before its sample size (3+3: by its own rule, not early)


def run_trial(design, tox, rng: np.random.Generator, start: int = 0, window: float = 28.0,
              accrual_per_month: float = 2.0) -> TrialOutcome:
    """One trial of `design` on true DLT probabilities `tox` (one per dose, increasing). A
    time-to-event design (tite) enters patients at `accrual_per_month`, a DLT at a uniform time
    within the `window` (days), as in Cheung and Chappell's simulations."""
    tox = np.asarray(tox, float)
    if getattr(design, "tite", False):
        gaps = rng.exponential(DAYS_PER_MONTH / accrual_per_month, int(design.max_n))
        outcome = lambda d, j: (rng.random() < tox[d], rng.uniform(0, window))  # noqa: E731
        n, y, selected, stopped, _ = run_time_to_event(design, len(tox), outcome, gaps, window)
        return TrialOutcome(n, y, selected, stopped)
    n, y, selected, stopped = run_cohorts(design, len(tox), lambda d, first, size: rng.binomial(size, tox[d]), start)
    return TrialOutcome(n, y, selected, stopped)


@dataclass(frozen=True)
class OperatingCharacteristics:
    design: str
    tox: np.ndarray
    trials: int
    table: pd.DataFrame       # per dose and "none": p_select, se, mean_n, se_n, mean_dlt, se_dlt
    p_stop_early: float
    mean_n: float
    se_mean_n: float

    def describe(self) -> str:
        return (f"{self.design}, {self.trials} trials: mean sample size {self.mean_n:.1f} "
                f"(SE {self.se_mean_n:.2f}), P(stop early) {self.p_stop_early:.3f}")


def operating_characteristics(design, tox, trials: int = 2000, seed: int = 0, start: int = 0, window: float = 28.0,
                              accrual_per_month: float = 2.0) -> OperatingCharacteristics:
    tox = np.asarray(tox, float)
    if tox.ndim != 1 or len(tox) < 2 or np.any((tox <= 0) | (tox >= 1)):
        raise ValueError(f"tox must be DLT probabilities in (0, 1), one per dose (at least 2), got {tox.tolist()}")
    if np.any(np.diff(tox) < 0):
        raise ValueError(f"tox must not decrease with dose, got {tox.tolist()}")
    if int(trials) != trials or trials < 2:
        raise ValueError(f"trials must be a whole number >= 2, got {trials}")
    rng = np.random.default_rng(seed)
    outcomes = [run_trial(design, tox, rng, start, window, accrual_per_month) for _ in range(int(trials))]
    n = np.array([o.n for o in outcomes])
    y = np.array([o.y for o in outcomes])
    selected = np.array([o.selected for o in outcomes])
    K = len(tox)
    picked = np.stack([selected == d for d in range(K)] + [selected == STOP], axis=1).astype(float)
    p = picked.mean(0)
    table = pd.DataFrame({
        "dose_level": [str(d + 1) for d in range(K)] + ["none"],
        "true_tox": list(tox) + [np.nan],
        "p_select": p, "se_select": np.sqrt(p * (1 - p) / trials),
        "mean_n": list(n.mean(0)) + [np.nan], "se_n": list(n.std(0, ddof=1) / np.sqrt(trials)) + [np.nan],
        "mean_dlt": list(y.mean(0)) + [np.nan], "se_dlt": list(y.std(0, ddof=1) / np.sqrt(trials)) + [np.nan]})
    total = n.sum(1)
    return OperatingCharacteristics(design.name, tox, int(trials), table,
                                    float(np.mean([o.stopped_early for o in outcomes])),
                                    float(total.mean()), float(total.std(ddof=1) / np.sqrt(trials)))
