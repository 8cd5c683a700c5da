"""The 3+3 design with dose de-escalation (Storer BE, Biometrics 1989;45:925-937; the variant of
Korn EL et al., Stat Med 1994;13:1799-1806, as in Wheeler GM, Sweeting MJ, Mander AP, PLoS One
2016;11:e0159026, whose exact operating characteristics the tests reproduce).

Cohorts of 3. At the current dose: 0/3 DLTs, or at most 1/6, escalate to the next untried dose
(at the top dose, stop and select it); 1/3, treat 3 more at the same dose; 2 or more DLTs (of 3
or of 6), the MTD is exceeded: that dose and those above are closed, and 3 more patients go to
the dose below unless it already has 6 (then the trial stops). The MTD is the highest open dose
that was tolerated (0/3 or at most 1/6); none when the lowest dose is closed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .selection import STOP


@dataclass(frozen=True)
class ThreePlusThree:
    name = "3+3"
    cohort_size = 3
    target = None

    @property
    def max_n(self) -> int:
        return 10**9  # the design stops itself (at most 6 per dose)

    def decide(self, n: np.ndarray, y: np.ndarray, current: int, eliminated: np.ndarray) -> int:
        tolerated = (n[current] == 3 and y[current] == 0) or (n[current] == 6 and y[current] <= 1)
        if n[current] == 3 and y[current] == 1:
            return current
        if tolerated:
            if current + 1 < len(n) and n[current + 1] == 0 and not eliminated[current + 1]:
                return current + 1
            return STOP
        eliminated[current:] = True
        if current == 0 or n[current - 1] >= 6:
            return STOP
        return current - 1

    def select(self, n: np.ndarray, y: np.ndarray, eliminated: np.ndarray) -> int:
        ok = np.flatnonzero(~eliminated & (((n == 3) & (y == 0)) | ((n == 6) & (y <= 1))))
        return int(ok[-1]) if len(ok) else STOP
