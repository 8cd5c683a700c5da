"""The modified toxicity probability interval design, mTPI-2 (Guo W, Wang S-J, Yang S, Lynn H,
Ji Y. Contemp Clin Trials 2017;58:23-33).

The unit interval is cut into the equivalence interval [target - eps_1, target + eps_2] and
intervals of the same width below and above it (the last ones truncated at 0 and 1). With a
Beta(1, 1) prior, the interval of the current dose's DLT probability with the largest unit
probability mass (posterior probability / length) decides: below the equivalence interval
escalate, inside stay, above de-escalate. Doses are eliminated, and the MTD selected, as in BOIN
(selection.py), the safety rule and isotonic selection of the published design."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.stats import beta

from .selection import STOP, check_sizes, check_target, eliminate, prob_above, select_isotonic

ESCALATE, STAY, DEESCALATE = "E", "S", "D"


@dataclass(frozen=True)
class MTPI2:
    target: float = 0.3
    cohort_size: int = 3
    max_n: int = 30
    eps_1: float = 0.05
    eps_2: float = 0.05
    cutoff_eliminate: float = 0.95
    name = "mTPI-2"

    def __post_init__(self):
        check_sizes(self.cohort_size, self.max_n)
        object.__setattr__(self, "target", check_target(self.target))
        if not (0 < self.eps_1 < self.target and 0 < self.eps_2 < 1 - self.target):
            raise ValueError(f"eps_1 and eps_2 must keep the equivalence interval inside (0, 1), "
                             f"got [{self.target - self.eps_1}, {self.target + self.eps_2}]")

    def rule(self, n: int, y: int) -> str:
        """E, S or D for y DLTs in n patients at a dose (before elimination)."""
        return _rule(self.target, self.eps_1, self.eps_2, n, y)

    def decide(self, n: np.ndarray, y: np.ndarray, current: int, eliminated: np.ndarray) -> int:
        if eliminate(self.target, self.cutoff_eliminate, n, y, current, eliminated):
            return STOP if current == 0 else current - 1
        decision = self.rule(int(n[current]), int(y[current]))
        if decision == ESCALATE and current + 1 < len(n) and not eliminated[current + 1]:
            return current + 1
        if decision == DEESCALATE and current > 0:
            return current - 1
        return current

    def select(self, n: np.ndarray, y: np.ndarray, eliminated: np.ndarray) -> int:
        return select_isotonic(self.target, n, y, eliminated, self.cutoff_eliminate)

    def decision_table(self) -> pd.DataFrame:
        """The decision (E, S, D, or DU: de-escalate and eliminate) for every y DLTs of n patients."""
        rows = []
        for n in range(1, self.max_n + 1):
            for y in range(n + 1):
                eliminate = n >= 3 and prob_above(self.target, n, y) > self.cutoff_eliminate
                rows.append({"n": n, "dlt": y, "decision": "DU" if eliminate else self.rule(n, y)})
        return pd.DataFrame(rows)


def intervals(target: float, eps_1: float, eps_2: float) -> list[tuple[float, float, str]]:
    """(lower, upper, decision) of every interval, from 0 to 1."""
    low, high = target - eps_1, target + eps_2
    width = eps_1 + eps_2
    below = [(max(0.0, b - width), b, ESCALATE) for b in np.arange(low, 1e-12, -width)]
    above = [(a, min(1.0, a + width), DEESCALATE) for a in np.arange(high, 1 - 1e-12, width)]
    return below[::-1] + [(low, high, STAY)] + above


@lru_cache(maxsize=100_000)
def _rule(target: float, eps_1: float, eps_2: float, n: int, y: int) -> str:
    """The decision of the interval with the largest unit probability mass (cached: a trial
    meets the same (n, y) over and over)."""
    best, decision = -1.0, STAY
    for a, b, what in intervals(target, eps_1, eps_2):
        upm = (beta.cdf(b, 1 + y, 1 + n - y) - beta.cdf(a, 1 + y, 1 + n - y)) / (b - a)
        if upm > best:
            best, decision = upm, what
    return decision
