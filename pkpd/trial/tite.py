"""Trials whose patients enter one at a time without waiting for the previous patients' DLT
windows (time-to-event designs such as the TITE-CRM): each patient gets the dose the design gives
with the data seen at their entry, a patient still in the window without a DLT counting by the
fraction of it followed; the MTD is selected once every window is complete."""

from __future__ import annotations

import numpy as np

from .selection import STOP


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
