"""The Cohort: one validated CAR-T dataset, whatever file format it came from.

Time is in days since the first CAR-T infusion (negative = pre-infusion baseline);
every observed value, LLOQ and limit is in its analyte's canonical unit.
A Cohort is a value: its tables are never modified in place by pkpd.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from ..analytes import Analyte

SUBJECT_COLUMNS = ["dose_level", "product", "lymphodepletion", "disease", "weight", "age", "sex"]
OBSERVATION_COLUMNS = ["subject", "time", "nominal_time", "analyte", "value", "lloq", "censored",
                       "limit", "mdv"]
DOSE_COLUMNS = ["subject", "time", "nominal_time", "amount", "unit", "cells", "evid"]
EVENT_COLUMNS = ["subject", "time", "nominal_time", "evid"]


@dataclass(frozen=True, eq=False)
class Cohort:
    """Subjects, doses, observations and other events of one study dataset.

    subjects:      index `subject`; columns dose_level, product, lymphodepletion, disease,
                   weight, age, sex, then any further baseline covariates.
    doses:         subject, time, nominal_time, amount, unit ('cells' or 'cells/kg'),
                   cells (absolute CAR+ cells), evid (1 dose, 4 reset and dose).
    observations:  subject, time, nominal_time, analyte, value, lloq, censored (1 below the
                   LLOQ with value = LLOQ, -1 above a limit, 0 quantified), limit (lower end of a
                   censored interval), mdv (excluded record).
    events:        EVID 2/3 records: subject, time, nominal_time, evid, time-varying covariates.
    analytes:      name -> Analyte (canonical unit) for every analyte observed.
    source:        file the cohort was read from (provenance), or a description.
    lines:         file line number of each observation / dose row, for messages (not data).
    """

    subjects: pd.DataFrame
    doses: pd.DataFrame
    observations: pd.DataFrame
    events: pd.DataFrame
    analytes: Mapping[str, Analyte]
    source: str = "<memory>"
    lines: Mapping[str, pd.Series] = field(default_factory=dict, repr=False)

    # --- views -----------------------------------------------------------------------------
    @property
    def subject_ids(self) -> list[str]:
        return list(self.subjects.index)

    @property
    def covariate_names(self) -> list[str]:
        return list(self.subjects.columns)

    def unit(self, analyte: str) -> str:
        return self.analytes[analyte].unit

    def analyte_observations(self, analyte: str) -> pd.DataFrame:
        """Rows of one analyte, excluded (MDV) records removed, sorted by subject and time."""
        obs = self.observations
        return obs[(obs["analyte"] == analyte) & ~obs["mdv"]]

    def select(self, subjects) -> "Cohort":
        """The cohort restricted to `subjects` (in their cohort order)."""
        keep = [s for s in self.subject_ids if s in set(map(str, subjects))]
        pick = lambda frame: frame[frame["subject"].isin(keep)].reset_index(drop=True)
        return Cohort(self.subjects.loc[keep], pick(self.doses), pick(self.observations),
                      pick(self.events), self.analytes, self.source)

    def select_analytes(self, analytes) -> "Cohort":
        """The cohort restricted to observations of `analytes` (ValueError if one is absent)."""
        wanted = list(analytes)
        missing = sorted(set(wanted) - set(self.observations["analyte"]))
        if missing:
            raise ValueError(f"the cohort has no observations of {', '.join(missing)}")
        obs = self.observations[self.observations["analyte"].isin(wanted)].reset_index(drop=True)
        return Cohort(self.subjects, self.doses, obs, self.events,
                      {a: v for a, v in self.analytes.items() if a in wanted}, self.source)

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame: one row per observation, with unit and the subject's covariates."""
        obs = self.observations.copy()
        obs["unit"] = obs["analyte"].map(lambda a: self.analytes[a].unit)
        first_dose = self.doses.groupby("subject")[["amount", "unit", "cells"]].first()
        first_dose.columns = ["dose_amount", "dose_unit", "dose_cells"]
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
        ds["obs_time"].attrs["units"] = "d"
        ds["dose_time"].attrs["units"] = "d"
        ds.attrs.update(source=str(self.source), time_unit="d",
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
