"""Dosing regimens for simulation and dose selection: an amount, how often, how it is given.

    3e8                      one dose of 3e8 (the model's dose unit, CAR+ cells by default)
    1e6/kg                   per kg of body weight
    100 mg x6 q12h           six doses of 100 mg, 12 h apart
    50 mg x3 q24h over 1h    each as a one-hour infusion
    3e8 split 10/30/60 q1d   a split dose: 10%, 30% and 60% of 3e8 on three days
    3e8 + 3e8 at 90d         a second infusion (re-infusion) 90 days after the first

Intervals and durations carry a time unit (h, d, min, w) or are in the model's time unit.
`Regimen.doses(...)` gives the dose rows of one subject (pkpd.data.cohort.dose_frame columns).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.cohort import dose_frame
from ..units import dose_unit, time_factor, time_unit

_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][+\-]?\d+)?"
_TIME = rf"({_NUMBER})\s*([a-z]*)"


@dataclass(frozen=True)
class Regimen:
    """A regimen: `amount` in `unit` (per kg when the unit says so) given `count` times every
    `interval`, each dose over `duration` (0: a bolus), split into `fractions` given
    `split_interval` apart; `extra` further (time, amount) doses (re-infusions). Times are in
    `time_unit` (None: the model's). `text` is how it was written."""

    text: str
    amount: float
    unit: str
    count: int = 1
    interval: float = 0.0
    duration: float = 0.0
    fractions: tuple[float, ...] = (1.0,)
    split_interval: float = 0.0
    extra: tuple[tuple[float, float], ...] = ()
    time_unit: str | None = None

    @property
    def label(self) -> str:
        return self.text

    def _timed_amounts(self, model_time_unit: str) -> list[tuple[float, float]]:
        """(time in `model_time_unit`, amount) of every dose, in time order."""
        k = time_factor(self.time_unit, model_time_unit) if self.time_unit else 1.0
        rows = []
        for i in range(self.count):
            for j, fraction in enumerate(self.fractions):
                rows.append((k * (i * self.interval + j * self.split_interval), self.amount * fraction))
        rows += [(k * t, a) for t, a in self.extra]
        return sorted((float(f"{t:.12g}"), a) for t, a in rows)  # unit conversions: no float noise

    def dose_times(self, model_time_unit: str) -> np.ndarray:
        """Times of the regimen's doses in `model_time_unit` from t = 0."""
        return np.array([t for t, _ in self._timed_amounts(model_time_unit)], float)

    def doses(self, subject: str, weight: float, model_time_unit: str) -> pd.DataFrame:
        """This regimen's dose rows for one subject, times in `model_time_unit` from t = 0."""
        parsed = dose_unit(self.unit)
        k = time_factor(self.time_unit, model_time_unit) if self.time_unit else 1.0
        rows = self._timed_amounts(model_time_unit)
        amount = np.array([a for _, a in rows])
        duration = float(f"{k * self.duration:.12g}")
        return dose_frame(subject=[subject] * len(rows), time=[t for t, _ in rows], amount=amount,
                          unit=[parsed.text] * len(rows),
                          absolute=amount * (weight if parsed.per_kg else 1.0),
                          absolute_unit=[parsed.absolute] * len(rows),
                          duration=[duration if duration > 0 else np.nan] * len(rows))

    def dose_table(self, subjects, weights, model_time_unit: str) -> pd.DataFrame:
        """This regimen's dose rows for many subjects at once (weights aligned with subjects)."""
        one = self.doses("x", 1.0, model_time_unit)
        n, k = len(one), len(subjects)
        table = one.loc[np.tile(np.arange(n), k)].reset_index(drop=True)
        table["subject"] = np.repeat(np.asarray(subjects, dtype=object), n)
        if dose_unit(self.unit).per_kg:
            table["absolute"] = table["amount"].to_numpy() * np.repeat(np.asarray(weights, float), n)
        return table

    def last_dose(self, model_time_unit: str) -> float:
        """Time of the regimen's last dose, in `model_time_unit`."""
        k = time_factor(self.time_unit, model_time_unit) if self.time_unit else 1.0
        last = (self.count - 1) * self.interval + (len(self.fractions) - 1) * self.split_interval
        return k * max([last] + [t for t, _ in self.extra])

    def total(self) -> float:
        """The total amount over the regimen (in `unit`)."""
        return self.amount * self.count * sum(self.fractions) + sum(a for _, a in self.extra)


def _time(text: str, what: str, original: str) -> tuple[float, str | None]:
    match = re.fullmatch(_TIME, text.strip().lower())
    if not match:
        raise ValueError(f"regimen {original!r}: {what} {text!r} is not a time such as 12h or 1d")
    value, unit = float(match.group(1)), match.group(2)
    if unit and time_unit(unit) is None:
        raise ValueError(f"regimen {original!r}: unknown time unit {unit!r} in {what} (use min, h, d or w)")
    return value, time_unit(unit) if unit else None


def parse_regimen(text: str | float, default_unit: str = "cells") -> Regimen:
    """Read a regimen as written in the module docstring; ValueError names what is wrong."""
    if isinstance(text, (int, float)):
        text = repr(float(text))
    original = str(text).strip()
    rest = original
    reinfusions = re.findall(rf"\+\s*({_NUMBER})\s*([^\s@]*)\s+at\s+(\S+)", rest)
    rest = re.sub(rf"\+\s*{_NUMBER}\s*[^\s@]*\s+at\s+\S+", " ", rest)
    count, interval, duration, fractions, split_interval = 1, 0.0, 0.0, (1.0,), 0.0
    units: list[tuple[str, str | None]] = []  # (which time, its unit)
    m = re.search(r"\bx\s*(\d+)\b", rest)
    if m:
        count = int(m.group(1))
        rest = rest.replace(m.group(0), " ")
    m = re.search(rf"\bsplit\s+((?:{_NUMBER}/)*{_NUMBER})\s+q\s*(\S+)", rest)
    if m:
        parts = [float(x) for x in m.group(1).split("/")]
        if not all(p > 0 for p in parts):
            raise ValueError(f"regimen {original!r}: split fractions must be positive")
        fractions = tuple(p / sum(parts) for p in parts)
        split_interval, u = _time(m.group(2), "split interval", original)
        units.append(("split_interval", u))
        rest = rest.replace(m.group(0), " ")
    m = re.search(r"\bover\s+(\S+)", rest)
    if m:
        duration, u = _time(m.group(1), "duration", original)
        units.append(("duration", u))
        rest = rest.replace(m.group(0), " ")
    m = re.search(r"\bq\s*(\S+)", rest)
    if m:
        interval, u = _time(m.group(1), "interval", original)
        units.append(("interval", u))
        rest = rest.replace(m.group(0), " ")
    m = re.fullmatch(rf"\s*({_NUMBER})\s*(.*?)\s*", rest)
    if not m:
        raise ValueError(f"regimen {original!r} is not AMOUNT [UNIT] [xN qINTERVAL] [over DURATION] "
                         "[split A/B/C qINTERVAL] [+ AMOUNT at TIME], e.g. '100 mg x6 q12h' or "
                         "'3e8 split 10/30/60 q1d'")
    amount = float(m.group(1))
    unit_text = m.group(2) or default_unit
    if unit_text.startswith("/"):
        unit_text = default_unit.split("/")[0] + unit_text
    parsed = dose_unit(unit_text)
    if parsed is None:
        raise ValueError(f"regimen {original!r}: unknown dose unit {unit_text!r}; use cells, cells/kg, mg, mg/kg, ...")
    if not (amount > 0 and math.isfinite(amount)):
        raise ValueError(f"regimen {original!r}: the amount must be positive and finite")
    if count > 1 and not interval > 0:
        raise ValueError(f"regimen {original!r}: {count} doses need an interval (q12h, q1d, ...)")
    if count < 1:
        raise ValueError(f"regimen {original!r}: the number of doses must be at least 1")
    extra = []
    for value, unit, at in reinfusions:
        t, u = _time(at, "re-infusion time", original)
        units.append((f"extra{len(extra)}", u))
        if unit and dose_unit(unit) != parsed:
            raise ValueError(f"regimen {original!r}: the re-infusion must be in {parsed.text}, like the first dose")
        extra.append((t, float(value)))
    # every time in the first unit named (a time without a unit is in the model's)
    named = [u for _, u in units if u]
    base = named[0] if named else None
    times = {"interval": interval, "duration": duration, "split_interval": split_interval}
    for which, u in units:
        k = time_factor(u, base) if u and base else 1.0
        if which.startswith("extra"):
            i = int(which[5:])
            extra[i] = (extra[i][0] * k, extra[i][1])
        else:
            times[which] *= k
    if named and len(named) != len(units):
        raise ValueError(f"regimen {original!r}: give every time a unit, or none (then the model's)")
    return Regimen(original, amount, parsed.text, count, times["interval"], times["duration"], fractions,
                   times["split_interval"], tuple(extra), base)


__all__ = ["Regimen", "parse_regimen"]
