"""How one trial runs, whatever draws its outcomes (fixed probabilities, pkpd.trial.oc; virtual
patients of a fit, pkpd.trial.simulation):

- `run_cohorts`: cohort by cohort, each decision once the cohort's data are in;
- `run_time_to_event`: patient by patient without waiting for the previous patients' DLT windows
  (time-to-event designs such as the TITE-CRM): each patient gets the dose the design gives with
  the data seen at their entry, a patient still in the window without a DLT counting by the
  fraction of it followed; the MTD is selected once every window is complete.
"""

from __future__ import annotations

import numpy as np

from .selection import STOP

DAYS_PER_MONTH = 30.4375


def run_cohorts(design, levels: int, dlts_of, start: int = 0, on_cohort=None):
    """One trial of a cohort design on `levels` doses. dlts_of(dose, first, size) -> the DLTs
    among that dose's patients first..first+size-1; on_cohort(dose, new_dose, size), if given,
    is told of each cohort before its outcomes (the simulator's clock). Returns (n, y per dose,
    selected, stopped early)."""
    n = np.zeros(levels, np.int64)
    y = np.zeros(levels, np.int64)
    eliminated = np.zeros(levels, bool)
    current, stopped = start, False
    while n.sum() < design.max_n:
        size = int(min(design.cohort_size, design.max_n - n.sum()))
        if on_cohort is not None:
            on_cohort(current, n[current] == 0, size)
        y[current] += dlts_of(current, n[current], size)
        n[current] += size
        current = design.decide(n, y, current, eliminated)
        if current == STOP:
            stopped = design.max_n < 10**9   # the 3+3 stops by its own rule, not early
            break
    return n, y, design.select(n, y, eliminated), stopped


def run_time_to_event(design, levels: int, outcome, gaps: np.ndarray, window: float):
    """One trial of a design with `decide_patients` on `levels` doses.

    outcome(dose, j) -> (dlt: bool, onset: days after entry) of the j-th patient at that dose;
    gaps: days between consecutive entries (at least design.max_n). Returns (n, y per dose,
    selected, stopped early, the day the last window closes)."""
    entry, level, dlt, onset = [], [], [], []
    count = np.zeros(levels, np.int64)
    eliminated = np.zeros(levels, bool)
    clock, current, stopped = 0.0, 0, False
    for i in range(int(design.max_n)):
        clock += gaps[i]
        if i:
            followed = np.minimum(clock - np.asarray(entry), window)
            seen = np.asarray(dlt) & (np.asarray(onset) <= followed)
            weight = np.where(seen, 1.0, followed / window)
            current = design.decide_patients(np.asarray(level), seen, weight, levels, eliminated)
            if current == STOP:
                stopped = True
                break
        event, when = outcome(current, count[current])
        count[current] += 1
        entry.append(clock)
        level.append(current)
        dlt.append(bool(event))
        onset.append(float(when))
    n = np.bincount(level, minlength=levels)
    y = np.bincount(level, weights=np.asarray(dlt, float), minlength=levels).astype(np.int64)
    end = (max(entry) + window) if entry else 0.0
    return n, y, design.select(n, y, eliminated), stopped, end
