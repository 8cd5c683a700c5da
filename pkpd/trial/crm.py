"""The continual reassessment method (CRM; O'Quigley J, Pepe M, Fisher L. Biometrics
1990;46:33-48), one-parameter power model p_d = skeleton_d ** exp(a), a ~ Normal(0, 1.34) (the
prior variance of Cheung's R package dfcrm), posterior by quadrature.

Each cohort goes to the dose whose posterior mean DLT probability is closest to the target,
never more than one level above the highest dose tried. With `ewoc` (escalation with overdose
control; Babb J, Rogatko A, Zacks S. Stat Med 1998;17:1103-1120) only doses with
P(p_d > target | data) <= ewoc may be given. The trial stops when P(p_1 > target) exceeds
`cutoff_stop` with at least 3 patients at the lowest dose. The MTD is the tried dose closest to
the target at the end. With `tite=True` (TITE-CRM; Cheung YK, Chappell R. Biometrics
2000;56:1177-1182) patients enter one at a time without waiting for the previous ones' DLT
windows: a patient still in the window without a DLT counts by the fraction of it followed
(pkpd.trial.runs.run_time_to_event runs such trials).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .selection import STOP, check_sizes, check_target

PRIOR_VARIANCE = 1.34
GRID = np.linspace(-4.5, 4.5, 601) * math.sqrt(PRIOR_VARIANCE)


def skeleton(target: float, levels: int, prior_mtd: int | None = None, halfwidth: float = 0.05) -> np.ndarray:
    """Prior DLT probabilities of `levels` doses, the dose `prior_mtd` (0-based; default the
    middle one) at the target, spaced so that the indifference intervals target +/- halfwidth of
    neighbouring doses meet (Lee SM, Cheung YK. Clin Trials 2009;6:227-238): dose d+1 has
    log s_{d+1} = log(target + halfwidth) log s_d / log(target - halfwidth)."""
    target = check_target(target)
    if not 0 < halfwidth < min(target, 1 - target):
        raise ValueError(f"halfwidth must lie in (0, {min(target, 1 - target)}), got {halfwidth}")
    prior_mtd = (levels - 1) // 2 if prior_mtd is None else int(prior_mtd)
    if not 0 <= prior_mtd < levels:
        raise ValueError(f"prior_mtd must be a dose index 0..{levels - 1}, got {prior_mtd}")
    up = math.log(target + halfwidth) / math.log(target - halfwidth)
    log_s = math.log(target) * up ** (np.arange(levels) - prior_mtd)
    return np.exp(log_s)


@dataclass(frozen=True)
class CRM:
    target: float = 0.3
    cohort_size: int = 3
    max_n: int = 30
    skeleton: tuple[float, ...] | None = None   # default skeleton(target, levels) per trial
    ewoc: float | None = None                   # overdose control: max P(p_d > target)
    cutoff_stop: float = 0.95
    tite: bool = False                          # time-to-event CRM: patients enter one at a time

    @property
    def name(self) -> str:
        return "TITE-CRM" if self.tite else "CRM"

    def __post_init__(self):
        check_sizes(self.cohort_size, self.max_n)
        object.__setattr__(self, "target", check_target(self.target))
        if self.skeleton is not None:
            s = np.asarray(self.skeleton, float)
            if s.ndim != 1 or np.any(np.diff(s) <= 0) or s[0] <= 0 or s[-1] >= 1:
                raise ValueError(f"skeleton must be increasing DLT probabilities in (0, 1), got {list(self.skeleton)}")
        if self.ewoc is not None and not 0 < self.ewoc < 1:
            raise ValueError(f"ewoc must be a probability in (0, 1), got {self.ewoc}")
        if self.tite and self.cohort_size != 1:
            raise ValueError(f"a TITE-CRM enters patients one at a time: cohort_size must be 1, got {self.cohort_size}")

    def prior(self, levels: int) -> np.ndarray:
        if self.skeleton is None:
            return skeleton(self.target, levels)
        if len(self.skeleton) != levels:
            raise ValueError(f"the skeleton has {len(self.skeleton)} doses, the trial {levels}")
        return np.asarray(self.skeleton, float)

    def _posterior_grid(self, levels: int, log_likelihood) -> tuple[np.ndarray, np.ndarray]:
        """(posterior weights of the quadrature grid of a, DLT probabilities (grid, doses)) for a
        log likelihood function of those probabilities."""
        p = self.prior(levels)[None, :] ** np.exp(GRID)[:, None]
        log_post = -0.5 * GRID ** 2 / PRIOR_VARIANCE + log_likelihood(p)
        w = np.exp(log_post - log_post.max())
        return w / w.sum(), p

    def _weights(self, n: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._posterior_grid(len(n), lambda p: (y * np.log(p) + (n - y) * np.log1p(-p)).sum(1))

    def posterior(self, n: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(posterior mean DLT probability per dose, P(p_d > target) per dose)."""
        w, p = self._weights(n, y)
        return w @ p, w @ (p > self.target)

    def posterior_a(self, n: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Posterior mean and variance of the model parameter a (dfcrm's beta)."""
        return _moments(self._weights(n, y)[0])

    def decide(self, n: np.ndarray, y: np.ndarray, current: int, eliminated: np.ndarray) -> int:
        return self._choose(*self.posterior(n, y), n, eliminated)

    def patient_posterior(self, level: np.ndarray, dlt: np.ndarray, weight: np.ndarray,
                          levels: int) -> tuple[np.ndarray, np.ndarray]:
        """The TITE-CRM posterior (Cheung and Chappell 2000): patient i at dose level[i] adds
        log p if a DLT was seen, else log(1 - weight[i] p), weight the fraction of the window
        followed (1 once complete): (grid weights, DLT probabilities (grid, doses))."""
        level, dlt, weight = np.asarray(level, int), np.asarray(dlt, bool), np.asarray(weight, float)
        return self._posterior_grid(levels, lambda p: np.where(dlt, np.log(p[:, level]),
                                                               np.log1p(-weight * p[:, level])).sum(1))

    def decide_patients(self, level: np.ndarray, dlt: np.ndarray, weight: np.ndarray, levels: int,
                        eliminated: np.ndarray) -> int:
        """The dose of the next patient of a TITE trial from the data seen so far."""
        w, p = self.patient_posterior(level, dlt, weight, levels)
        return self._choose(w @ p, w @ (p > self.target), np.bincount(level, minlength=levels), eliminated)

    def _choose(self, mean: np.ndarray, above: np.ndarray, n: np.ndarray, eliminated: np.ndarray) -> int:
        if n[0] >= 3 and above[0] > self.cutoff_stop:
            eliminated[:] = True
            return STOP
        allowed = np.arange(len(n)) <= np.flatnonzero(n > 0).max() + 1
        if self.ewoc is not None:
            allowed &= above <= self.ewoc
            allowed[0] = True
        distance = np.where(allowed, np.abs(mean - self.target), np.inf)
        return int(np.argmin(distance))

    def select(self, n: np.ndarray, y: np.ndarray, eliminated: np.ndarray) -> int:
        if eliminated[0]:
            return STOP
        mean, _ = self.posterior(n, y)
        distance = np.where(n > 0, np.abs(mean - self.target), np.inf)
        return int(np.argmin(distance))


def _moments(w: np.ndarray) -> tuple[float, float]:
    mean = float(w @ GRID)
    return mean, float(w @ (GRID - mean) ** 2)
