"""Pieces the interval designs share: the posterior tail that eliminates a dose, and the
isotonic selection of the MTD at the end of a trial."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.optimize import isotonic_regression
from scipy.stats import beta

STOP = -1  # the next dose of a trial that stops


def prob_above(target: float, n, y) -> np.ndarray:
    """P(p > target | y DLTs in n patients), p ~ Beta(1, 1) a priori."""
    return beta.sf(target, 1 + np.asarray(y), 1 + np.asarray(n) - np.asarray(y))


def eliminate(target: float, cutoff: float, n, y, current: int, eliminated: np.ndarray) -> bool:
    """The interval designs' safety rule: with at least 3 patients at the current dose and
    P(p > target | data) > cutoff, that dose and every dose above it are eliminated (in place)."""
    if n[current] >= 3 and _tail(target, int(n[current]), int(y[current])) > cutoff:
        eliminated[current:] = True
        return True
    return False


def check_target(target: float) -> float:
    target = float(target)
    if not 0 < target < 1:
        raise ValueError(f"target must be a DLT probability between 0 and 1, got {target}")
    return target


@lru_cache(maxsize=100_000)
def _tail(target: float, n: int, y: int) -> float:
    """prob_above for one dose, cached: trials meet the same (n, y) over and over."""
    return float(prob_above(target, n, y))


def check_sizes(cohort_size: int, max_n: int) -> None:
    if int(cohort_size) != cohort_size or cohort_size < 1:
        raise ValueError(f"cohort_size must be a whole number >= 1, got {cohort_size}")
    if int(max_n) != max_n or max_n < cohort_size:
        raise ValueError(f"max_n must be a whole number of patients >= cohort_size ({cohort_size}), got {max_n}")


def select_isotonic(target: float, n: np.ndarray, y: np.ndarray, eliminated: np.ndarray,
                    cutoff: float = 0.95) -> int:
    """The dose whose isotonic estimate of the DLT probability is closest to the target, among
    doses treated and not eliminated; -1 when none is left (BOIN's rule, Liu and Yuan 2015
    section 2.3, as in the R package BOIN's select.mtd: the safety rule applied once more to
    every dose, pseudo-counts 0.05/0.1, weights the inverse Beta variances; of doses tied at the
    same estimate, the lowest when it lies above the target and the highest when below)."""
    eliminated = eliminated.copy()
    toxic = np.flatnonzero((n >= 3) & (prob_above(target, n, y) > cutoff))
    if len(toxic):
        eliminated[toxic[0]:] = True
    candidates = np.flatnonzero((n > 0) & ~eliminated)
    if eliminated[0] or len(candidates) == 0:
        return STOP
    yc, nc = y[candidates], n[candidates]
    estimate = (yc + 0.05) / (nc + 0.1)
    variance = (yc + 0.05) * (nc - yc + 0.05) / ((nc + 0.1) ** 2 * (nc + 1.1))
    fitted = isotonic_regression(estimate, weights=1 / variance).x
    # tie-breaking increments: within a pooled block the lowest dose is closest from above, the
    # highest from below
    fitted = fitted + np.arange(len(candidates)) * 1e-10
    return int(candidates[np.argmin(np.abs(fitted - target))])
