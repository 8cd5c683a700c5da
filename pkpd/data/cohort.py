"""The Cohort: one validated dataset, whatever file format it came from.

Times are in the cohort's `time_unit` ('h', 'd', ...), as the file gave them (negative =
before the first dose); every observed value, LLOQ and limit is in its analyte's canonical
unit; doses keep their amount and unit as written beside the absolute amount.
A Cohort is a value: its tables are never modified in place by pkpd.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from ..analytes import Analyte

SUBJECT_COLUMNS = ["dose_level", "product", "lymphodepletion", "disease", "weight", "age", "sex"]
OBSERVATION_COLUMNS = ["subject", "time", "nominal_time", "analyte", "value", "lloq", "censored",
                       "limit", "mdv"]
DOSE_COLUMNS = ["subject", "time", "nominal_time", "amount", "unit", "absolute", "absolute_unit", "cmt",
                "rate", "duration", "ii", "addl", "ss", "evid"]
EVENT_COLUMNS = ["subject", "time", "nominal_time", "evid"]
#: a plain bolus dose: no compartment named (the model's default target), no infusion, no repeats
BOLUS = {"cmt": "", "rate": np.nan, "duration": np.nan, "ii": np.nan, "addl": 0, "ss": 0, "evid": 1}


def dose_frame(**columns) -> pd.DataFrame:
    """A doses table (DOSE_COLUMNS order) from columns or scalars; regimen columns default to a
    bolus (BOLUS), nominal_time to time, absolute to amount."""
    columns.setdefault("nominal_time", columns.get("time"))
    columns.setdefault("absolute", columns.get("amount"))
    columns.setdefault("absolute_unit", columns.get("unit"))
    frame = pd.DataFrame({**BOLUS, **columns}, index=range(len(columns["subject"])))
    return frame[DOSE_COLUMNS].astype({"addl": int, "ss": int, "evid": int, "cmt": object})


@dataclass(frozen=True, eq=False)
class Cohort:
    """Subjects, doses, observations and other events of one study dataset.

    subjects:      index `subject`; columns dose_level, product, lymphodepletion, disease,
                   weight, age, sex, then any further baseline covariates.
    doses:         subject, time, nominal_time, amount and unit as written ('cells/kg', 'mg'),
                   absolute amount and its absolute_unit (per-kg amounts times weight: 'cells',
                   'mg'), cmt (the state receiving it, as written: a number, a name or ''),
                   rate or duration (zero-order infusion; NaN for a bolus), ii and addl
                   (addl further doses every ii), ss (1: at steady state before it), evid (1
                   dose, 4 reset and dose). NONMEM's meanings throughout.
    observations:  subject, time, nominal_time, analyte, value, lloq, censored (1 below the
                   LLOQ with value = LLOQ, -1 above a limit, 0 quantified), limit (lower end of a
                   censored interval), mdv (excluded record).
    events:        EVID 2/3 records: subject, time, nominal_time, evid, time-varying covariates.
    analytes:      name -> Analyte (canonical unit) for every analyte observed.
    source:        file the cohort was read from (provenance), or a description.
    lines:         file line number of each observation / dose row, for messages (not data).
    time_unit:     unit of every time ('min', 'h', 'd' or 'w'); durations and intervals too.
    """

    subjects: pd.DataFrame
    doses: pd.DataFrame
    observations: pd.DataFrame
    events: pd.DataFrame
    analytes: Mapping[str, Analyte]
    source: str = "<memory>"
    lines: Mapping[str, pd.Series] = field(default_factory=dict, repr=False)
    time_unit: str = "d"

    # --- views -----------------------------------------------------------------------------
    @property
    def subject_ids(self) -> list[str]:
        return list(self.subjects.index)

    @property
    def covariate_names(self) -> list[str]:
        return list(self.subjects.columns)

    def unit(self, analyte: str) -> str:
        return self.analytes[analyte].unit

    @cached_property
    def lloq(self) -> dict[str, float]:
        """Each analyte's LLOQ as in the data (median over its records; analytes without one
        are absent). Computed once: a cohort is not changed after it is made."""
        median = self.observations.groupby("analyte", observed=True)["lloq"].median().dropna()
        return {str(a): float(v) for a, v in median.items()}

    def analyte_observations(self, analyte: str) -> pd.DataFrame:
        """Rows of one analyte, excluded (MDV) records removed, sorted by subject and time."""
        obs = self.observations
        return obs[(obs["analyte"] == analyte) & ~obs["mdv"]]

    def select(self, subjects) -> "Cohort":
        """The cohort restricted to `subjects` (in their cohort order)."""
        keep = [s for s in self.subject_ids if s in set(map(str, subjects))]
        pick = lambda frame: frame[frame["subject"].isin(keep)].reset_index(drop=True)
        return replace(self, subjects=self.subjects.loc[keep], doses=pick(self.doses),
                       observations=pick(self.observations), events=pick(self.events), lines={})

    def select_analytes(self, analytes) -> "Cohort":
        """The cohort restricted to observations of `analytes` (ValueError if one is absent)."""
        wanted = list(analytes)
        missing = sorted(set(wanted) - set(self.observations["analyte"].unique()))
        if missing:
            raise ValueError(f"the cohort has no observations of {', '.join(missing)}")
        obs = self.observations[self.observations["analyte"].isin(wanted)].reset_index(drop=True)
        return replace(self, observations=obs, analytes={a: v for a, v in self.analytes.items() if a in wanted},
                       lines={})

    @classmethod
    def pooled(cls, cohorts: Mapping[str, "Cohort"]) -> "Cohort":
        """One cohort of the subjects of several, {label: cohort}: subject ids become
        'LABEL-ID' so that subjects of different cohorts never merge; times in the first
        cohort's unit. (Pooling studies, or arms simulated separately.)"""
        if not cohorts:
            raise ValueError("pooling needs at least one cohort")
        unit = next(iter(cohorts.values())).time_unit
        parts = {str(label): c.in_time_unit(unit) for label, c in cohorts.items()}
        renamed = lambda label, frame: frame.assign(subject=label + "-" + frame["subject"].astype(str))
        subjects = pd.concat([c.subjects.rename(index=lambda s, label=label: f"{label}-{s}")
                              for label, c in parts.items()])
        subjects.index.name = "subject"
        analytes = {}
        for c in parts.values():
            for name, analyte in c.analytes.items():
                if name in analytes and analytes[name].unit != analyte.unit:
                    raise ValueError(f"analyte {name} is in {analytes[name].unit} in one cohort and {analyte.unit} "
                                     "in another; convert one before pooling")
                analytes.setdefault(name, analyte)
        join = lambda key: pd.concat([renamed(label, getattr(c, key)) for label, c in parts.items()],
                                     ignore_index=True)
        return cls(subjects, join("doses"), join("observations"), join("events"), analytes,
                   source="pooled: " + ", ".join(f"{label} ({c.source})" for label, c in parts.items()),
                   time_unit=unit)

    def in_time_unit(self, unit: str) -> "Cohort":
        """The same cohort with every time, duration, interval and rate in `unit`."""
        from ..units import time_factor

        if unit == self.time_unit:
            return self
        k = time_factor(self.time_unit, unit)
        timed = lambda frame: frame.assign(time=frame["time"] * k, nominal_time=frame["nominal_time"] * k)
        doses = timed(self.doses).assign(duration=self.doses["duration"] * k, ii=self.doses["ii"] * k,
                                         rate=self.doses["rate"] / k)
        return replace(self, doses=doses, observations=timed(self.observations), events=timed(self.events),
                       time_unit=unit)

    def dose_records(self) -> pd.DataFrame:
        """Every dose as its own row: each ADDL further dose expanded at its interval II
        (addl set to 0, ss kept on the first dose only), sorted by subject and time."""
        doses = self.doses
        extra = doses[doses["addl"] > 0]
        if extra.empty:
            return doses
        repeats = extra.loc[extra.index.repeat(extra["addl"])].copy()
        k = repeats.groupby(level=0).cumcount().to_numpy() + 1
        repeats["time"] = repeats["time"] + k * repeats["ii"]
        repeats["nominal_time"] = repeats["nominal_time"] + k * repeats["ii"]
        repeats["ss"] = 0
        out = pd.concat([doses, repeats]).assign(addl=0)
        return in_subject_order(out, self.subject_ids)

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame: one row per observation, with unit and the subject's covariates."""
        obs = self.observations.copy()
        obs["unit"] = obs["analyte"].map(lambda a: self.analytes[a].unit)
        first_dose = self.doses.groupby("subject")[["amount", "unit", "absolute"]].first()
        first_dose.columns = ["dose_amount", "dose_unit", "dose_absolute"]
        out = obs.merge(self.subjects, left_on="subject", right_index=True, how="left")
        return out.merge(first_dose, left_on="subject", right_index=True, how="left")

    def to_xarray(self) -> xr.Dataset:
        """Dataset with a `subject` dimension for covariates and ragged `obs`/`dose` dimensions."""
        subj = self.subjects
        data = {}
        for col in subj.columns:
            values = subj[col]
            if str(values.dtype) == "boolean":  # yes/no with missing: 1.0 / 0.0 / NaN
                values = values.astype(float)
            elif values.dtype == object or str(values.dtype) in ("str", "string"):
                values = values.astype(object).where(values.notna(), None).astype(str)
            data[col] = ("subject", values.to_numpy())
        obs = self.observations
        for col in OBSERVATION_COLUMNS:
            name = "obs_" + col if col in ("subject", "time", "nominal_time") else col
            data[name] = ("obs", _plain(obs[col]))
        for col in DOSE_COLUMNS:
            data["dose_" + col if not col.startswith("dose") else col] = ("dose", _plain(self.doses[col]))
        ds = xr.Dataset(data, coords={"subject": subj.index.to_numpy().astype(str)})
        ds["value"].attrs["units_by_analyte"] = json.dumps(
            {name: a.unit for name, a in self.analytes.items()})
        ds["obs_time"].attrs["units"] = self.time_unit
        ds["dose_time"].attrs["units"] = self.time_unit
        ds.attrs.update(source=str(self.source), time_unit=self.time_unit,
                        analytes=json.dumps({n: a.__dict__ | {"aliases": list(a.aliases)}
                                             for n, a in self.analytes.items()}))
        return ds

    def summary(self) -> pd.DataFrame:
        """Counts per analyte: subjects, observations, BLQ share, unit."""
        obs = self.observations[~self.observations["mdv"]]
        rows = []
        for name, group in obs.groupby("analyte", sort=False):
            rows.append({"analyte": name, "unit": self.analytes[name].unit,
                         "subjects": group["subject"].nunique(), "observations": len(group),
                         "blq_percent": round(100 * float((group["censored"] == 1).mean()), 1)})
        return pd.DataFrame(rows)

    def equals(self, other: "Cohort", rtol: float = 1e-9) -> bool:
        """Same data (source and line numbers ignored), up to `rtol` on floats."""
        return not self.differences(other, rtol)

    def differences(self, other: "Cohort", rtol: float = 1e-9) -> list[str]:
        """Human-readable list of what differs from `other` (empty when equal)."""
        out = []
        for name in ("subjects", "doses", "observations", "events"):
            a, b = getattr(self, name), getattr(other, name)
            diff = _frame_difference(a, b, rtol)
            if diff:
                out.append(f"{name}: {diff}")
        if {k: v.unit for k, v in self.analytes.items()} != {k: v.unit for k, v in other.analytes.items()}:
            out.append("analytes differ")
        if self.time_unit != other.time_unit:
            out.append(f"time unit {self.time_unit} != {other.time_unit}")
        return out


def in_subject_order(frame: pd.DataFrame, subjects, keys=("time",)) -> pd.DataFrame:
    """Records sorted by subject, in the order of `subjects`, then by `keys` (stable).

    The one canonical record order of a Cohort, whatever built it (reader or simulator)."""
    rank = pd.Index(list(subjects)).get_indexer(frame["subject"])
    return (frame.assign(_rank=rank).sort_values(["_rank", *keys], kind="stable")
            .drop(columns="_rank").reset_index(drop=True))


def _plain(series: pd.Series) -> np.ndarray:
    if series.dtype == object or str(series.dtype) in ("str", "string"):
        return series.astype(str).to_numpy()
    return series.to_numpy()


def _frame_difference(a: pd.DataFrame, b: pd.DataFrame, rtol: float) -> str:
    if list(a.columns) != list(b.columns):
        return f"columns {list(a.columns)} != {list(b.columns)}"
    if len(a) != len(b):
        return f"{len(a)} rows != {len(b)} rows"
    if not a.index.astype(str).equals(b.index.astype(str)):
        return "index differs"
    for col in a.columns:
        x, y = a[col].reset_index(drop=True), b[col].reset_index(drop=True)
        if pd.api.types.is_float_dtype(x) and pd.api.types.is_float_dtype(y):
            xv, yv = x.to_numpy(float), y.to_numpy(float)
            same = np.isclose(xv, yv, rtol=rtol, atol=0) | (np.isnan(xv) & np.isnan(yv))
        else:
            both_missing = (x.isna() & y.isna()).to_numpy()
            same = (x.astype(object) == y.astype(object)).to_numpy(dtype=bool, na_value=False) | both_missing
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            return f"column {col!r} row {i}: {x.iloc[i]!r} != {y.iloc[i]!r}"
    return ""
