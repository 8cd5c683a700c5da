"""The Bayesian optimal interval design (BOIN; Liu S, Yuan Y. J R Stat Soc C 2015;64:507-523;
Yuan Y, Hess KR, Hilsenbeck SG, Gilbert MR. Clin Cancer Res 2016;22:4291-4301).

The next cohort goes up when the DLT rate seen at the current dose is at most lambda_e, down
when it is at least lambda_d, and stays otherwise; lambda_e and lambda_d minimise the chance of a
wrong decision between the target and the highest rate still thought subtherapeutic (phi_1,
default 0.6 x target) or the lowest thought overly toxic (phi_2, 1.4 x target). A dose (and every
dose above it) is eliminated once P(p > target | data) > 0.95 with at least 3 patients treated
there; the trial stops when the lowest dose is eliminated. At the end the MTD is selected by
isotonic regression (selection.select_isotonic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .selection import STOP, check_sizes, check_target, eliminate, prob_above, select_isotonic


def boin_boundaries(target: float, phi_1: float | None = None, phi_2: float | None = None) -> tuple[float, float]:
    """(lambda_e, lambda_d), Liu and Yuan 2015 eq. (3)-(4): 0.236 and 0.358 for a target of 0.3."""
    target = check_target(target)
    phi_1 = 0.6 * target if phi_1 is None else float(phi_1)
    phi_2 = 1.4 * target if phi_2 is None else float(phi_2)
    if not 0 < phi_1 < target < phi_2 < 1:
        raise ValueError(f"need 0 < phi_1 < target < phi_2 < 1, got phi_1 = {phi_1}, target = {target}, phi_2 = {phi_2}")
    lambda_e = math.log((1 - phi_1) / (1 - target)) / math.log(target * (1 - phi_1) / (phi_1 * (1 - target)))
    lambda_d = math.log((1 - target) / (1 - phi_2)) / math.log(phi_2 * (1 - target) / (target * (1 - phi_2)))
    return lambda_e, lambda_d


@dataclass(frozen=True)
class BOIN:
    target: float = 0.3
    cohort_size: int = 3
    max_n: int = 30                # patients in the trial
    phi_1: float | None = None     # default 0.6 x target
    phi_2: float | None = None     # default 1.4 x target
    cutoff_eliminate: float = 0.95
    n_earlystop: int = 100         # stop once this many patients are at the current dose (R BOIN's default)
    name = "BOIN"

    def __post_init__(self):
        check_sizes(self.cohort_size, self.max_n)
        object.__setattr__(self, "target", check_target(self.target))
        boin_boundaries(self.target, self.phi_1, self.phi_2)  # checks phi_1, phi_2

    @property
    def boundaries(self) -> tuple[float, float]:
        return boin_boundaries(self.target, self.phi_1, self.phi_2)

    def decide(self, n: np.ndarray, y: np.ndarray, current: int, eliminated: np.ndarray) -> int:
        """The next cohort's dose (STOP to end the trial); marks eliminated doses in place."""
        lambda_e, lambda_d = self.boundaries
        if eliminate(self.target, self.cutoff_eliminate, n, y, current, eliminated):
            return STOP if current == 0 else current - 1
        if n[current] >= self.n_earlystop:
            return STOP
        rate = y[current] / n[current]
        if rate <= lambda_e and current + 1 < len(n) and not eliminated[current + 1]:
            return current + 1
        if rate >= lambda_d and current > 0:
            return current - 1
        return current

    def select(self, n: np.ndarray, y: np.ndarray, eliminated: np.ndarray) -> int:
        return select_isotonic(self.target, n, y, eliminated, self.cutoff_eliminate)

    def decision_table(self) -> pd.DataFrame:
        """For each number of patients at a dose (1 to max_n): escalate when the DLTs are at most
        `escalate_if_le`, de-escalate when at least `deescalate_if_ge`, eliminate the dose and those
        above when at least `eliminate_if_ge` (empty where no count eliminates, or n < 3)."""
        lambda_e, lambda_d = self.boundaries
        rows = []
        for n in range(1, self.max_n + 1):
            y = np.arange(n + 1)
            eliminate = y[(prob_above(self.target, n, y) > self.cutoff_eliminate)] if n >= 3 else []
            rows.append({"n": n, "escalate_if_le": math.floor(lambda_e * n + 1e-12),
                         "deescalate_if_ge": math.ceil(lambda_d * n - 1e-12),
                         "eliminate_if_ge": int(eliminate[0]) if len(eliminate) else pd.NA})
        return pd.DataFrame(rows).astype({"eliminate_if_ge": "Int64"})

