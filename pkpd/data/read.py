"""Read NONMEM-style or ADaM-style files into a validated Cohort.

Every rule adds located findings to one Report; a Cohort is built only when the
report has no errors. Rules, in the order they run:

  missing-column, non-numeric, missing-value, unknown-evid, time-unit, dose-amount,
  dose-unit, dose-weight, unknown-analyte, unknown-unit, inconsistent-unit, cens-value,
  blq-flag, censored-no-lloq, negative-value, adverse-event-grade, below-lloq-unflagged (warning),
  duplicate-conflict, duplicate (warning), no-dose, covariate-conflict, covariate-value,
  unknown-product (warning), unsorted-time (note), ignored-dv (note), unit-converted (note)
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .. import analytes as catalogue
from ..units import TIME_UNITS, UnitError, conversion_factor, dose_unit as parse_dose_unit, time_factor, time_unit
from .cohort import (BOLUS, Cohort, DOSE_COLUMNS, OBSERVATION_COLUMNS, SUBJECT_COLUMNS,
                     in_subject_order)
from .mapping import FORMATS, ColumnMapping, detect_format
from .report import DataError, Report
from .table import read_raw_table

PRODUCTS = ("CD19", "CD19/BCMA", "CD19/CD20")
_TRUE = {"Y", "YES", "1", "TRUE", "T"}
_FALSE = {"N", "NO", "0", "FALSE", "F"}


@dataclass(frozen=True)
class CheckResult:
    """The report of a check, and the cohort when the report has no errors."""

    report: Report
    cohort: Cohort | None
    format: str | None


def check_file(path: str | Path, format: str | None = None, mapping: Mapping[str, str] | None = None,
               *, units: Mapping[str, str] | None = None,
               analyte_codes: Mapping[int, str] | None = None, time_unit: str | None = None,
               dose_unit: str | None = None, comment: str | None = None) -> CheckResult:
    """Read and validate `path`; never raises for bad data (see `CheckResult.report`).

    format:        'nonmem', 'adam' or None to detect from the header.
    mapping:       role -> column name, for columns named otherwise (see pkpd.data.ROLES).
    units:         analyte -> unit, for files without a unit column or with analytes outside
                   the catalogue.
    analyte_codes: DVID/CMT code -> analyte name, when codes differ from pkpd's own (with
                   no DVID or ANALYTE column, CMT codes name the analytes of observations).
    time_unit:     unit of TIME/AFRLT ('h', 'd', 'min', 'w') where the file has no time-unit
                   column (TIMEU/RRLTU); without either, days are assumed with a warning.
    dose_unit:     unit of AMT (cells, cells/kg, mg, mg/kg, ug, ...) where the file has no
                   dose-unit column (AMTU/DOSEU); without either, cells with a warning.
    comment:       a marker such as '#': rows whose first cell starts with it are skipped as
                   comments, with a note (NONMEM's IGNORE=#); without it they are read as data,
                   with a warning.
    """
    report = Report(file=str(path))
    raw = read_raw_table(path, report, comment=comment)
    if raw is None:
        return CheckResult(report, None, format)
    fmt = (format or detect_format(raw.frame.columns) or "").lower()
    if fmt not in FORMATS:
        if format:
            report.add("error", "format", f"unknown format {format!r}.", "use 'nonmem' or 'adam'.")
        else:
            report.add("error", "format", "could not tell the format from the header "
                       f"({', '.join(map(str, raw.frame.columns[:-1][:12]))}).",
                       "a NONMEM-style file needs ID, TIME, DV, AMT; an ADaM file needs USUBJID, "
                       "AFRLT, PARAMCD, AVAL; or pass the format and a column mapping.", line=1)
        return CheckResult(report, None, None)
    try:
        columns = FORMATS[fmt].with_overrides(mapping)
    except ValueError as exc:
        report.add("error", "mapping", str(exc), "fix the column mapping.")
        return CheckResult(report, None, fmt)
    builder = _Builder(raw.frame, columns, report, units=dict(units or {}),
                       analyte_codes=dict(analyte_codes or {}), time_unit=time_unit,
                       dose_unit=dose_unit, source=str(path))
    cohort = builder.build()
    return CheckResult(report, cohort if report.ok else None, fmt)


def read_cohort(path: str | Path, format: str | None = None,
                mapping: Mapping[str, str] | None = None, **options) -> Cohort:
    """Read a NONMEM-style or ADaM-style file into a Cohort; raise DataError listing every
    problem when the file has errors. Options as for `check_file`."""
    result = check_file(path, format, mapping, **options)
    if result.cohort is None:
        raise DataError(result.report)
    return result.cohort


class _Builder:
    """One pass over a raw table: interpret roles, add findings, assemble the Cohort."""

    def __init__(self, frame: pd.DataFrame, columns: ColumnMapping, report: Report, *, units,
                 analyte_codes, time_unit, dose_unit, source):
        self.f = frame
        self.columns = columns
        self.col = columns.resolve([c for c in frame.columns if c != "_line"])
        self.report = report
        self.units = units
        self.codes = {int(k): v for k, v in analyte_codes.items()}
        self.time_unit = time_unit
        self.dose_unit = dose_unit
        self.source = source
        self.line = frame["_line"].to_numpy()
        self.subject = None  # set in build
        self._numbers: dict[str, pd.Series] = {}  # parsed numeric columns, findings added once

    # --- small helpers ----------------------------------------------------------------------
    def add(self, severity, rule, message, fix="", rows=None, column=None):
        """Add one finding per row index in `rows` (or a single file-level finding)."""
        if rows is None:
            self.report.add(severity, rule, message, fix, column=column)
            return
        for i in np.atleast_1d(rows):
            subj = None if self.subject is None else self.subject[i]
            msg = message(i) if callable(message) else message
            self.report.add(severity, rule, msg, fix, line=self.line[i], column=column, subject=subj)

    def text(self, role) -> pd.Series | None:
        name = self.col.get(role)
        return None if name is None else self.f[name].astype(str)

    def number(self, role, required: np.ndarray | None = None, what: str = "",
               fix: str = "") -> pd.Series | None:
        """Numeric column for `role`; non-numbers and non-finite numbers (inf, nan, 1e999) are
        errors (reported once per column), blanks are errors where `required`."""
        name = self.col.get(role)
        if name is None:
            return None
        raw = self.f[name]
        if name not in self._numbers:
            self._numbers[name] = self._parse_numbers(raw, name, what, fix)
        values = self._numbers[name].copy()
        if required is not None:
            missing = np.flatnonzero(required & (raw == "").to_numpy())
            self.add("error", "missing-value", f"{what or name} is missing.",
                     fix or f"fill in {name} on this row.", missing, name)
        return values

    def _parse_numbers(self, raw: pd.Series, name: str, what: str = "", fix: str = "") -> pd.Series:
        values = pd.to_numeric(raw.where(raw != ""), errors="coerce").astype(float)
        bad = np.flatnonzero(((raw != "") & values.isna()).to_numpy())
        label = f" ({what})" if what else ""
        self.add("error", "non-numeric", lambda i: f"{raw.iloc[i]!r} is not a number{label}{_number_hint(raw.iloc[i])}.",
                 (fix + " " if fix else "") + "Write a plain number such as 12.5 (decimal point, no units "
                 "or symbols in the cell); leave the cell empty or '.' where there is no value.", bad, name)
        infinite = np.flatnonzero(np.isinf(values.to_numpy()))
        self.add("error", "non-finite", lambda i: f"{raw.iloc[i]!r} is not a finite number{label}.",
                 "write the value as a finite number (above about 1.8e308 a number overflows to "
                 "infinity); leave the cell empty or '.' where there is no value.", infinite, name)
        values.iloc[infinite] = np.nan
        return values

    def overflow(self, values: np.ndarray, rows: np.ndarray, column, what: str) -> None:
        """Values finite as written but infinite after a unit conversion or a per-kg product."""
        bad = rows[np.isinf(values)]
        self.add("error", "non-finite", f"{what} overflows to infinity after unit conversion.",
                 "check the value and its unit; a value this large is a data-entry error.", bad, column)

    # --- the pass ---------------------------------------------------------------------------
    def build(self) -> Cohort | None:
        if not self._required_columns():
            return None
        n = len(self.f)
        subject = self.text("subject_label") if "subject_label" in self.col else None
        ids = self.text("subject")
        if subject is not None:
            subject = subject.where(subject != "", ids)
        else:
            subject = ids
        missing_id = np.flatnonzero((subject == "").to_numpy())
        self.add("error", "missing-value", "the subject identifier is missing.",
                 "give every row its subject's ID.", missing_id, self.col["subject"])
        self.subject = subject.to_numpy()
        self.subject_order = list(dict.fromkeys(self.subject[self.subject != ""]))

        time = self._times()
        evid, mdv = self._evid_mdv(n)
        is_obs = (evid == 0)
        is_dose = np.isin(evid, (1, 4))
        is_event = np.isin(evid, (2, 3))

        doses = self._doses(is_dose, time)
        observations = self._observations(is_obs, mdv, time)
        subjects = self._subjects(is_event, doses)
        events = self._events(is_event, time)
        if doses is not None and observations is not None:
            self._subjects_without_dose(observations, doses)
        if not self.report.ok or subjects is None or doses is None or observations is None:
            return None
        doses = self._absolute_amounts(doses, subjects)
        if doses is None:
            return None
        if "dose_level" not in self.col:
            first = doses.sort_values(["subject", "time"]).groupby("subject").first()
            labels = {s: format_dose(r.amount, r.unit) for s, r in first.iterrows()}
            subjects["dose_level"] = pd.Series([labels.get(s, pd.NA) for s in subjects.index],
                                               index=subjects.index, dtype=object)
        lines = {"observations": observations.pop("_line"), "doses": doses.pop("_line")}
        return Cohort(subjects=subjects, doses=doses, observations=observations, events=events,
                      analytes=self.analytes, source=self.source, lines=lines,
                      time_unit=self.cohort_time_unit)

    def _required_columns(self) -> bool:
        ok = True
        for role in self.columns.required:
            if role not in self.col:
                names = " or ".join(self.columns.candidates[role])
                self.report.add("error", "missing-column", f"required column {names} "
                                f"({catalogue_role(role)}) is missing.",
                                f"add the column, or map yours to the role '{role}' "
                                f"(--map {role}=YOURCOLUMN).", line=1,
                                column=self.columns.candidates[role][0])
                ok = False
        for group in self.columns.one_of:
            if not any(role in self.col for role in group):
                names = " or ".join(n for r in group for n in self.columns.candidates.get(r, ()))
                self.report.add("error", "missing-column", f"one of the columns {names} is "
                                "needed and none is present.", "add one of them, or map your "
                                f"column to one of the roles {', '.join(group)}.", line=1,
                                column=names)
                ok = False
        return ok

    def _times(self) -> np.ndarray:
        """Times in the cohort's time unit: the file's (a TIMEU/RRLTU column, most common value
        when rows differ), else the `time_unit` option, else days with a warning."""
        everywhere = np.ones(len(self.f), bool)
        time = self.number("time", everywhere, "time", "write the time since the first dose as a "
                           "number (negative for pre-dose samples).")
        option = None
        if self.time_unit is not None:
            option = time_unit(self.time_unit)
            if option is None:
                self.add("error", "time-unit", f"unknown time unit {self.time_unit!r} (option time_unit).",
                         f"use one of {', '.join(TIME_UNITS)} (--time-unit h for hours).")
        if "time_unit" in self.col:
            written = self.text("time_unit").str.strip()
            units = written.map({u: time_unit(u) if u else option for u in written.unique()})
            bad = np.flatnonzero((units.isna() & (written != "")).to_numpy())
            self.add("error", "time-unit", lambda i: f"unknown time unit {written.iloc[i]!r}.",
                     "use HOURS, DAYS, MINUTES or WEEKS.", bad, self.col["time_unit"])
            blank = np.flatnonzero((units.isna() & (written == "")).to_numpy())
            self.add("error", "time-unit", "the time unit is missing on this row.",
                     f"fill in {self.col['time_unit']}, or pass --time-unit for rows without one.",
                     blank, self.col["time_unit"])
            known = units.dropna()
            self.cohort_time_unit = known.mode().iloc[0] if len(known) else (option or "d")
            factor = units.map({u: time_factor(u, self.cohort_time_unit) for u in known.unique() if u}).to_numpy(float)
            if known.nunique() > 1:
                self.report.add("note", "time-unit", f"rows give times in {', '.join(sorted(known.unique()))}; "
                                f"all were converted to {self.cohort_time_unit}.", "", column=self.col["time_unit"])
        else:
            self.cohort_time_unit = option or "d"
            factor = np.ones(len(self.f))
            if option is None and self.time_unit is None:
                self.report.add("warning", "time-unit-assumed", "the file does not say the unit of its "
                                "times; they are read as days.", "add a TIMEU (or RRLTU) column, or pass "
                                "time_unit='h' (--time-unit h) if the times are hours.",
                                column=self.col.get("time"))
        self.time_factor_rows = factor
        nominal = self.number("nominal_time", None, "nominal time")
        if nominal is None:
            nominal = time
        self.nominal = (nominal.fillna(time) * factor).to_numpy()
        converted = (time * factor).to_numpy()
        everyone = np.arange(len(self.f))
        self.overflow(converted, everyone, self.col["time"], "the time")
        self.overflow(self.nominal, everyone, self.col.get("nominal_time"), "the nominal time")
        return converted

    def _evid_mdv(self, n):
        amt = self.number("amt", None, "dose amount")
        if "evid" in self.col:
            evid = self.number("evid", np.ones(n, bool), "EVID",
                               "use 0 (observation), 1 (dose), 2 (other), 3 (reset) or 4 (reset and dose).")
            unknown = np.flatnonzero(evid.notna() & ~evid.isin([0, 1, 2, 3, 4]))
            self.add("error", "unknown-evid", lambda i: f"EVID {evid.iloc[i]:g} is not a NONMEM event "
                     "type.", "use 0 (observation), 1 (dose), 2 (other), 3 (reset) or 4 (reset and "
                     "dose).", unknown, self.col["evid"])
            evid = evid.fillna(-1).to_numpy(int)
        else:
            # NONMEM's own rule without EVID: a row with AMT > 0 is a dose.
            evid = np.zeros(n, int) if amt is None else np.where((amt.fillna(0) > 0).to_numpy(), 1, 0)
        self.amt = amt
        mdv = self.number("mdv", None, "MDV", "use 0 or 1.")
        if mdv is not None:
            bad = np.flatnonzero(mdv.notna() & ~mdv.isin([0, 1]))
            self.add("error", "non-numeric", lambda i: f"MDV must be 0 or 1, not {mdv.iloc[i]:g}.",
                     "use 0 or 1.", bad, self.col["mdv"])
            mdv = (mdv.fillna(0) == 1).to_numpy()
        else:
            mdv = np.zeros(n, bool)
        return evid, mdv

    # --- doses ------------------------------------------------------------------------------
    def _doses(self, is_dose, time) -> pd.DataFrame | None:
        units = self._dose_units()
        if is_dose.any():
            amt_col = self.col.get("amt") or self.col.get("dose_per_subject")
            if self.amt is None:  # ADaM dose rows may carry the dose in DOSEA only
                self.amt = self.number("dose_per_subject", None, "dose (DOSEA)")
            bad = np.flatnonzero(is_dose & ~(self.amt > 0).to_numpy())
            self.add("error", "dose-amount", lambda i: "the dose amount is "
                     + ("missing" if np.isnan(self.amt.iloc[i]) else f"{self.amt.iloc[i]:g}, not positive")
                     + ".", "give the amount on dose rows (e.g. 3e8 CAR+ cells, or 100 with AMTU=mg).",
                     bad, amt_col)
            rows = np.flatnonzero(is_dose)
            frame = pd.DataFrame({"subject": self.subject[rows], "time": time[rows],
                                  "nominal_time": self.nominal[rows],
                                  "amount": self.amt.to_numpy()[rows], "unit": units[rows],
                                  "evid": self._evid_values(rows), "_line": self.line[rows]})
            return frame.assign(**self._dose_regimen(rows))
        if "dose_per_subject" in self.col:
            return self._doses_from_dosea(units)
        self.add("error", "no-dose", "the file has no dose rows (EVID 1 with AMT) and no per-subject "
                 "dose column (DOSEA).", "add one dose row per dose, or a DOSEA column.")
        return None

    def _dose_regimen(self, rows) -> dict:
        """CMT (the state that receives the dose), RATE or DUR (zero-order infusion), II with ADDL
        (repeated doses) and SS (steady state) of the dose rows, NONMEM's meanings."""
        n = len(rows)
        cmt = self.text("cmt")
        out = {"cmt": (cmt.to_numpy()[rows] if cmt is not None else np.full(n, "", object)).astype(object)}
        for role, what in (("rate", "RATE"), ("duration", "DUR"), ("ii", "II"), ("addl", "ADDL"), ("ss", "SS")):
            values = self.number(role, None, what)
            out[role] = values.to_numpy()[rows] if values is not None else np.full(n, np.nan)
        rate, duration, ii = out["rate"], out["duration"], out["ii"]
        addl, ss = np.nan_to_num(out["addl"]), np.nan_to_num(out["ss"])
        where = lambda mask: rows[np.flatnonzero(mask)]
        self.add("error", "dose-rate", "a modelled rate or duration (RATE -1 or -2) is not supported.",
                 "give the infusion's RATE (amount per time unit) or its duration DUR.",
                 where(np.isin(rate, (-1, -2))), self.col.get("rate"))
        self.add("error", "dose-rate", lambda i: f"RATE {self.number('rate').iloc[i]:g} is not an infusion "
                 "rate.", "give a positive rate (amount per time unit) or 0 for a bolus.",
                 where((rate < 0) & ~np.isin(rate, (-1, -2))), self.col.get("rate"))
        self.add("error", "dose-duration", lambda i: f"DUR {self.number('duration').iloc[i]:g} is negative.",
                 "give the infusion's duration in the time unit of TIME, or 0 for a bolus.",
                 where(duration < 0), self.col.get("duration"))
        self.add("error", "dose-rate", "the row gives both RATE and DUR.",
                 "give one of them: RATE (amount per time unit) or DUR (duration).",
                 where((rate > 0) & (duration > 0)), self.col.get("rate"))
        self.add("error", "dose-addl", "ADDL must be a whole number of additional doses >= 0.",
                 "write 0 or a positive integer.", where((addl < 0) | (addl != np.round(addl))),
                 self.col.get("addl"))
        self.add("error", "dose-ss", lambda i: f"SS {ss[list(rows).index(i)]:g} is not supported.",
                 "use SS=1 (steady state before this dose) or 0.", where(~np.isin(ss, (0, 1))),
                 self.col.get("ss"))
        self.add("error", "dose-ii", "ADDL or SS needs the dosing interval II > 0.",
                 "give the interval between doses in II.", where(((addl > 0) | (ss == 1)) & ~(ii > 0)),
                 self.col.get("ii"))
        # durations and intervals are times: in the cohort's time unit like TIME
        factor = self.time_factor_rows[rows]
        out["duration"] = np.where(duration > 0, duration * factor, np.nan)
        out["rate"] = np.where(rate > 0, rate / factor, np.nan)
        out["ii"] = np.where(ii > 0, ii * factor, np.nan)
        for role, what in (("duration", "the duration"), ("rate", "the infusion rate"), ("ii", "the interval")):
            self.overflow(out[role], rows, self.col.get(role), what)
        out["addl"] = addl.astype(int)
        out["ss"] = ss.astype(int)
        return out

    def _evid_values(self, rows):
        if "evid" in self.col:
            return self.number("evid").to_numpy()[rows].astype(int)
        return np.ones(len(rows), int)

    def _dose_units(self) -> np.ndarray:
        """The unit of each row's dose amount, parsed (pkpd.units.dose_unit); None where unknown."""
        n = len(self.f)
        fallback = None
        if self.dose_unit is not None:
            fallback = parse_dose_unit(self.dose_unit)
            if fallback is None:
                self.add("error", "dose-unit", f"unknown dose unit {self.dose_unit!r} (option dose_unit).",
                         "use cells, cells/kg, a mass such as mg, ug or mg/kg, or a unit declared with "
                         "pkpd.units.define.")
        else:
            with_amount = (self.amt.fillna(0) > 0).to_numpy() if self.amt is not None else np.zeros(n, bool)
            unitless = with_amount & ((self.text("dose_unit") == "").to_numpy() if "dose_unit" in self.col else True)
            if unitless.any() or ("dose_per_subject" in self.col and "dose_unit" not in self.col):
                self.report.add("warning", "dose-unit-assumed", "the file does not say the unit of "
                                "(some) dose amounts; they are read as CAR+ cells.", "add an AMTU (or "
                                "DOSEU) column, or pass dose_unit='mg' (--dose-unit mg) for another unit.",
                                column=self.col.get("amt") or self.col.get("dose_per_subject"))
            fallback = parse_dose_unit("cells")
        if "dose_unit" not in self.col:
            return np.full(n, fallback, dtype=object)
        text = self.text("dose_unit")
        units = np.array([parse_dose_unit(t) if t else fallback for t in text], object)
        rows_with_amount = (self.amt.fillna(0) > 0).to_numpy() if self.amt is not None else np.ones(n, bool)
        bad = np.flatnonzero(pd.isna(units) & (text != "").to_numpy() & rows_with_amount)
        self.add("error", "dose-unit", lambda i: f"unknown dose unit {text.iloc[i]!r}.",
                 "use cells or cells/kg, a mass such as mg, ug, mg/kg, or a unit declared with "
                 "pkpd.units.define.", bad, self.col["dose_unit"])
        return units

    def _doses_from_dosea(self, units) -> pd.DataFrame | None:
        col = self.col["dose_per_subject"]
        amount = self.number("dose_per_subject", None, "dose (DOSEA)")
        rows = []
        for subj, idx in pd.Series(range(len(self.f))).groupby(self.subject):
            values = amount.iloc[idx.to_numpy()].dropna().unique()
            i = int(idx.iloc[0])
            if len(values) != 1 or not values[0] > 0:
                self.add("error", "dose-amount", "DOSEA must hold one positive dose per subject "
                         f"(found {', '.join(f'{v:g}' for v in values) or 'none'}).",
                         "write the subject's dose on every row.", [i], col)
                continue
            rows.append({"subject": subj, "time": 0.0, "nominal_time": 0.0, "amount": float(values[0]),
                         "unit": units[i], "_line": self.line[i], **BOLUS})
        return pd.DataFrame(rows, columns=["subject", "time", "nominal_time", "amount", "unit", "_line", *BOLUS])

    def _absolute_amounts(self, doses: pd.DataFrame, subjects: pd.DataFrame) -> pd.DataFrame | None:
        """Each dose's absolute amount: per-kg amounts times the subject's weight."""
        doses = doses.copy()
        weight = doses["subject"].map(subjects["weight"]).astype(float)
        per_kg = np.array([u.per_kg for u in doses["unit"]], bool)
        no_weight = per_kg & weight.isna().to_numpy()
        for i in np.flatnonzero(no_weight):
            self.report.add("error", "dose-weight", f"the dose is in {doses['unit'].iloc[i].text} but the "
                            "subject has no body weight.", "add the weight column (WT, or WTBL in ADaM) in kg.",
                            line=doses["_line"].iloc[i], column=self.col.get("weight", "WT"),
                            subject=doses["subject"].iloc[i])
        if no_weight.any():
            return None
        doses["absolute"] = np.where(per_kg, doses["amount"] * weight, doses["amount"])
        infinite = np.isinf(doses["absolute"].to_numpy(float))
        for i in np.flatnonzero(infinite):
            self.report.add("error", "non-finite", "the dose times the body weight overflows to infinity.",
                            "check the amount and its unit (per kg?).", line=doses["_line"].iloc[i],
                            column=self.col.get("amt"), subject=doses["subject"].iloc[i])
        if infinite.any():
            return None
        doses["absolute_unit"] = [u.absolute for u in doses["unit"]]
        doses["unit"] = [u.text for u in doses["unit"]]
        return in_subject_order(doses[[*DOSE_COLUMNS, "_line"]], self.subject_order)

    # --- observations -----------------------------------------------------------------------
    def _observations(self, is_obs, mdv, time) -> pd.DataFrame | None:
        rows = np.flatnonzero(is_obs)
        self.analytes: dict[str, catalogue.Analyte] = {}
        if len(rows) == 0:
            self.add("error", "no-observations", "the file has no observation rows (EVID 0).",
                     "add the measured values, one row per sample and analyte.")
            return None
        names = self._analyte_names(rows)
        factors = self._unit_factors(rows, names)
        dv = self.number("dv")
        cens = self._censoring(rows)
        lloq = self.number("lloq", None, "LLOQ")
        limit = self.number("limit", None, "LIMIT")
        value = dv.to_numpy()[rows].copy()
        lloq_v = lloq.to_numpy()[rows].copy() if lloq is not None else np.full(len(rows), np.nan)
        limit_v = limit.to_numpy()[rows].copy() if limit is not None else np.full(len(rows), np.nan)
        is_mdv = mdv[rows]
        censored = cens
        dv_col = self.col["dv"]

        # CENS=1 in NONMEM: DV holds the LLOQ; a BLQ flag style gives the LLOQ in its own column.
        left = censored == 1
        lloq_v = np.where(left & np.isnan(lloq_v), value, lloq_v)
        no_lloq = left & np.isnan(lloq_v) & ~is_mdv
        self.add("error", "censored-no-lloq", "the record is flagged below the LLOQ but no LLOQ is "
                 "given.", f"put the LLOQ in {self.col.get('lloq') or 'an LLOQ column'}"
                 f"{' (or in ' + dv_col + ' with CENS=1)' if self.columns.format == 'nonmem' else ''}.",
                 rows[no_lloq], self.col.get("lloq") or dv_col)
        ignored = left & ~np.isnan(value) & ~np.isnan(lloq_v) & ~np.isclose(value, lloq_v) & ~is_mdv
        self.add("note", "ignored-dv", lambda i: f"the value {dv.iloc[i]:g} on a below-LLOQ record is "
                 "not used: the record is censored at the LLOQ (M3), never imputed.",
                 "", rows[ignored], dv_col)
        value = np.where(left, lloq_v, value)
        right = censored == -1
        missing = np.isnan(value) & ~is_mdv & (self.f[dv_col].to_numpy()[rows] == "")  # not "non-numeric"
        self.add("error", "missing-value", f"the observed value ({dv_col}) is missing.",
                 "fill it in; flag a below-LLOQ sample (CENS=1, or BLQ with the LLOQ), or set MDV=1 "
                 "to exclude the record.", rows[missing & ~left], dv_col)
        negative = (value < 0) | (lloq_v < 0)
        self.add("error", "negative-value", lambda i: f"negative value {dv.iloc[i]:g}; concentrations, "
                 "counts and limits cannot be negative.", "give values on their natural (linear) scale, "
                 "not log-transformed.", rows[negative], dv_col)
        event = np.array([self.analytes[n].kind == "adverse_event" if n in self.analytes else False for n in names])
        bad_grade = event & ~is_mdv & ((censored != 0) | ~np.isin(value, np.arange(catalogue.MAX_GRADE + 1)))
        self.add("error", "adverse-event-grade", lambda i: f"{dv.iloc[i]:g} is not an adverse-event grade "
                 f"(a whole number 0-{catalogue.MAX_GRADE}, never censored).", "give the grade (ASTCT for CRS and "
                 "ICANS; 0 when assessed without the event) at the event's onset time.", rows[bad_grade], dv_col)
        below = ~left & ~right & ~is_mdv & (value < lloq_v)
        self.add("warning", "below-lloq-unflagged", lambda i: f"the value {dv.iloc[i]:g} is below its "
                 f"LLOQ {lloq.iloc[i]:g} but is not flagged as censored.",
                 "flag it (CENS=1 or BLQ=Y) so that it is handled as below the LLOQ (M3), or correct "
                 "the LLOQ.", rows[below], dv_col)

        self.overflow(value * factors, rows, dv_col, "the value")
        self.overflow(lloq_v * factors, rows, self.col.get("lloq"), "the LLOQ")
        obs = pd.DataFrame({
            "subject": self.subject[rows], "time": time[rows], "nominal_time": self.nominal[rows],
            "analyte": names, "value": value * factors, "lloq": lloq_v * factors,
            "censored": censored.astype(int), "limit": limit_v * factors, "mdv": is_mdv,
            "_line": self.line[rows]})
        obs = self._duplicates(obs)
        if self.report.ok:
            order = in_subject_order(obs, self.subject_order, ("time", "analyte"))
            if not order.index.equals(obs.index) and not _sorted_by_subject_time(obs):
                self.report.add("note", "unsorted-time", "records are not in time order within "
                                "subjects; pkpd sorts them.", "")
            obs = order
        return obs[[*OBSERVATION_COLUMNS, "_line"]]

    def _analyte_names(self, rows) -> np.ndarray:
        names = np.empty(len(rows), dtype=object)
        source_role = next(r for r in ("analyte", "analyte_label", "dvid", "cmt") if r in self.col)
        column = self.col[source_role]
        values = self.f[column].to_numpy()[rows]
        labels = self.text("analyte_label")
        labels = labels.to_numpy(object)[rows] if labels is not None else np.full(len(rows), None, dtype=object)
        named = {}  # one lookup per distinct (value, label), in order of first appearance
        for k, key in enumerate(zip(values, labels)):
            if key not in named:
                named[key] = self._analyte_name(key[0], source_role, key[1])
            names[k] = named[key]
        bad = np.flatnonzero(pd.isna(names))
        code_fix = (f"name the analyte of a {column} code: --analyte-code CODE=NAME --unit NAME=UNIT "
                    "(analyte_codes={CODE: NAME}, units={NAME: UNIT} in Python), or use a known analyte "
                    "(pkpd.analytes.CATALOGUE).")
        self.add("error", "unknown-analyte", lambda i: f"analyte {self.f[column].iloc[i]!r} is not "
                 "known and has no declared unit." if self.f[column].iloc[i] != "" else
                 "the analyte is missing.",
                 code_fix if source_role in ("dvid", "cmt") else
                 "use a known analyte (pkpd.analytes.CATALOGUE: transgene, il6, bcells, igg, ...), "
                 "give its unit in a UNIT/AVALU column, or declare it with --unit NAME=UNIT (units={NAME: UNIT}).",
                 rows[bad], column)
        return names

    def _analyte_name(self, value, role, label) -> str | None:
        value = str(value).strip()
        if value == "":
            return None
        is_code = role in ("dvid", "cmt") and re.fullmatch(r"\d+(\.0+)?", value)
        if is_code:
            code = int(float(value))
            if code in self.codes:
                value = self.codes[code]
            elif role == "dvid" and catalogue.lookup_dvid(code):
                return self._register(catalogue.lookup_dvid(code))
            else:
                return None
        known = catalogue.lookup(value)
        if known is not None:
            return self._register(known)
        if value in self.analytes:
            return value
        declared = self.units.get(value)
        if declared is None and "unit" in self.col:
            declared = "*"  # unit comes per row; checked in _unit_factors
        if declared is None:
            return None
        return value

    def _register(self, analyte) -> str:
        self.analytes.setdefault(analyte.name, analyte)
        return analyte.name

    def _unit_factors(self, rows, names) -> np.ndarray:
        """Factor taking each row's value to its analyte's canonical unit."""
        factors = np.ones(len(rows))
        unit_col = self.col.get("unit")
        written = (self.text("unit").str.strip().to_numpy()[rows] if unit_col
                   else np.full(len(rows), "", dtype=object))
        pairs = pd.DataFrame({"name": names, "unit": written})
        used: dict[str, set] = {}
        # one unit check per distinct (analyte, unit) pair; findings for each of its rows
        for (name, unit), group in pairs[pairs["name"].notna()].groupby(["name", "unit"], sort=False):
            where = group.index.to_numpy()
            if not unit:
                unit = self.units.get(name) or (self.analytes[name].unit if name in self.analytes else "")
            if not unit:
                self.add("error", "unknown-unit", f"analyte {name!r} has no unit.",
                         "give the unit in a UNIT/AVALU column or declare it with units={NAME: UNIT}.",
                         rows[where], unit_col)
                continue
            if name not in self.analytes:
                near = _ascii_near_miss(name)
                if near is not None:
                    self.add("warning", "analyte-near-miss", f"analyte {name!r} is read as an analyte of "
                             f"its own, not as {near.name}: the names differ in non-ASCII characters.",
                             f"write {near.name} if that is what it is.", rows[where[:1]], self.col.get("analyte"))
                try:
                    self.analytes[name] = catalogue.custom(name, self.units.get(name, unit))
                except UnitError as exc:
                    self.add("error", "unknown-unit", f"unknown unit {unit!r} for analyte {name!r} ({exc}).",
                             "write a unit pint understands, such as mg/L, pg/mL, cells/uL, IU/mL.",
                             rows[where], unit_col)
                    continue
            target = self.analytes[name]
            try:
                factors[where] = conversion_factor(unit, target.unit)
            except UnitError as exc:
                rule = "inconsistent-unit" if "cannot convert" in str(exc) else "unknown-unit"
                self.add("error", rule, f"unit {unit!r} of {name} cannot be converted to its canonical "
                         f"unit {target.unit}" + (" (different dimension)." if rule ==
                                                   "inconsistent-unit" else f": {exc}."),
                         f"report {name} in {target.unit} or a unit convertible to it.", rows[where],
                         unit_col)
                continue
            if factors[where[0]] != 1.0:
                used.setdefault(name, set()).add(unit)
        self._declared_units(pairs)
        for name, converted in used.items():
            self.report.add("note", "unit-converted", f"{name} values in {', '.join(sorted(converted))} "
                            f"were converted to {self.analytes[name].unit}.", "", column=unit_col)
        return factors

    def _declared_units(self, pairs: pd.DataFrame) -> None:
        """Every unit given as an option (--unit NAME=UNIT) is used or said not to be: an analyte
        the file lacks, a unit of another dimension than the analyte's, or rows whose own unit
        column overrides it."""
        option = self.columns.candidates.get("unit", ("UNIT",))[0]
        for name, unit in self.units.items():
            rows = pairs[pairs["name"] == name]
            if rows.empty:
                self.report.add("warning", "unit-option-unused", f"a unit was given for {name!r} "
                                f"(units={{{name!r}: {unit!r}}}, --unit {name}={unit}) but the file has no "
                                f"such analyte (it has {', '.join(sorted(self.analytes)) or 'none'}).",
                                "check the analyte's name, or drop the option.")
                continue
            target = self.analytes.get(name)
            try:
                if target is not None:
                    conversion_factor(unit, target.unit)
            except UnitError as exc:
                self.report.add("error", "unknown-unit" if "unknown unit" in str(exc) or "unit " in str(exc)
                                and "cannot convert" not in str(exc) else "inconsistent-unit",
                                f"the unit given for {name} ({unit!r}, option units / --unit) cannot be "
                                f"converted to its canonical unit {target.unit}: {exc}.",
                                f"give {name}'s unit as {target.unit} or a unit convertible to it.")
                continue
            own = (rows["unit"] != "").sum()
            if own:
                self.report.add("note", "unit-option-unused", f"{own} {name} record(s) give their own unit in "
                                f"the {self.col.get('unit', option)} column, which is used instead of the option "
                                f"--unit {name}={unit}.", "")

    def _censoring(self, rows) -> np.ndarray:
        out = np.zeros(len(rows), int)
        if "cens" in self.col:
            cens = self.number("cens", None, "CENS", "use 0, 1 (below LLOQ) or -1 (above ULOQ).")
            values = cens.to_numpy()[rows]
            bad = ~np.isnan(values) & ~np.isin(values, (-1, 0, 1))
            self.add("error", "cens-value", lambda i: f"CENS {cens.iloc[i]:g} is not 0, 1 or -1.",
                     "use 0 (quantified), 1 (below the LLOQ) or -1 (above the upper limit).",
                     rows[bad], self.col["cens"])
            out = np.where(np.isin(values, (-1, 1)), values, 0).astype(int)
        if "blq" in self.col:
            flags = self.text("blq").str.strip().str.upper().to_numpy()[rows]
            truthy = np.isin(flags, list(_TRUE))
            bad = ~truthy & ~np.isin(flags, list(_FALSE)) & (flags != "")
            self.add("error", "blq-flag", lambda i: f"BLQ flag {self.f[self.col['blq']].iloc[i]!r} is "
                     "not Y/N or 1/0.", "write Y or 1 for below the LLOQ, N, 0 or blank otherwise.",
                     rows[bad], self.col["blq"])
            out = np.where(truthy, 1, out)
        return out

    def _duplicates(self, obs: pd.DataFrame) -> pd.DataFrame:
        live = obs[~obs["mdv"]]
        keys = ["subject", "time", "analyte"]
        dup = live[live.duplicated(keys, keep=False)]
        drop = []
        for _, group in dup.groupby(keys, sort=False):
            first = group.iloc[0]
            same = ((group["value"].sub(first["value"]).abs() <= 1e-12 * abs(first["value"]))
                    & (group["censored"] == first["censored"])).all()
            lines = ", ".join(str(x) for x in group["_line"])
            for _, row in group.iloc[1:].iterrows():
                if same:
                    self.report.add("warning", "duplicate", f"identical {row['analyte']} record at "
                                    f"time {row['time']:g} (lines {lines}); kept once.",
                                    "delete the repeated row.", line=row["_line"],
                                    column=self.col["dv"], subject=row["subject"])
                    drop.append(row.name)
                else:
                    self.report.add("error", "duplicate-conflict", f"conflicting {row['analyte']} "
                                    f"records at time {row['time']:g} (lines {lines}) with different "
                                    "values.", "keep one record per subject, time and analyte (use "
                                    "MDV=1 to exclude a repeat).", line=row["_line"],
                                    column=self.col["dv"], subject=row["subject"])
        return obs.drop(index=drop)

    def _subjects_without_dose(self, obs, doses):
        dosed = set(doses["subject"])
        for subj, group in obs.groupby("subject", sort=False):
            if subj not in dosed:
                self.report.add("error", "no-dose", "the subject has observations but no dose.",
                                "add the CAR-T infusion (EVID=1 with AMT) for this subject, or remove "
                                "its rows.", line=group["_line"].min(), column=self.col.get("amt")
                                or self.col.get("dose_per_subject"), subject=subj)

    # --- subjects and events ----------------------------------------------------------------
    def _subjects(self, is_event, doses) -> pd.DataFrame | None:
        ordinary = ~is_event
        table = pd.DataFrame(index=pd.Index(self.subject_order, name="subject", dtype=object))
        for role in SUBJECT_COLUMNS:
            if role not in self.col:
                table[role] = _typed([pd.NA] * len(table), table.index, _dtype(role))
                continue
            table[role] = self._covariate(role, self.col[role], ordinary, table.index)
        for column in self._extra_columns():
            table[column] = self._covariate(None, column, ordinary, table.index)
        return table

    def _covariate(self, role, column, rows_mask, index) -> pd.Series:
        raw = self.f[column].astype(str)
        parsed = self._parse_covariate(role, column, raw)
        frame = pd.DataFrame({"subject": self.subject, "value": parsed, "raw": raw,
                              "line": self.line})[rows_mask & (raw != "").to_numpy()]
        frame = frame[frame["value"].notna()]
        values = frame.groupby("subject", sort=False)["value"].first().to_dict()
        varying = frame.groupby("subject", sort=False)["value"].nunique()
        for subj in varying.index[varying > 1]:
            group = frame[frame["subject"] == subj]
            distinct = group["value"].unique()
            numeric = role in ("weight", "age") or pd.api.types.is_float_dtype(parsed)
            if numeric:
                self.report.add("note" if role else "warning", "covariate-varies",
                                f"{column} changes within the subject on ordinary rows; its "
                                "first value is used as the baseline.", "put time-varying "
                                "covariates on EVID=2 rows.", line=group["line"].iloc[0],
                                column=column, subject=subj)
            else:
                self.report.add("error", "covariate-conflict", f"{column} takes several values "
                                f"({', '.join(map(str, distinct[:4]))}) for one subject.",
                                f"give each subject a single {column}.",
                                line=group.loc[group["value"] != distinct[0], "line"].iloc[0],
                                column=column, subject=subj)
        return _typed([values.get(s, pd.NA) for s in index], index,
                      _dtype(role) if role else parsed.dtype)

    def _parse_covariate(self, role, column, raw: pd.Series) -> pd.Series:
        if role in ("weight", "age"):
            out = self.number(role, None, role)
            bad = np.flatnonzero((out <= 0).to_numpy())
            self.add("error", "covariate-value", lambda i: f"{role} {out.iloc[i]:g} is not positive.",
                     f"give {role} in {'kg' if role == 'weight' else 'years'}.", bad, column)
            return out
        if role == "lymphodepletion":
            upper = raw.str.strip().str.upper().str.replace(r"^([01])\.0*$", r"\1", regex=True)
            out = pd.Series(pd.NA, index=raw.index, dtype="boolean")
            out[upper.isin(_TRUE | {"FLU/CY", "FLUCY"})] = True
            out[upper.isin(_FALSE)] = False
            bad = np.flatnonzero((out.isna() & (raw != "")).to_numpy())
            self.add("error", "covariate-value", lambda i: f"lymphodepletion {raw.iloc[i]!r} is not "
                     "yes or no.", "write Y/N (or 1/0).", bad, column)
            return out
        if role == "product":
            out = raw.map({value: _product(value) for value in raw.unique()})
            unknown = np.flatnonzero(~out.isin(PRODUCTS) & (raw != "").to_numpy())
            first = {}
            for i in unknown:
                first.setdefault(raw.iloc[i], i)
            self.add("warning", "unknown-product", lambda i: f"product {raw.iloc[i]!r} is not one of "
                     f"{', '.join(PRODUCTS)}; kept as written.", "check the spelling if it is one of "
                     "those targets.", sorted(first.values()), column)
            return out.where(raw != "", pd.NA)
        if role == "sex":
            upper = raw.str.strip().str.upper()
            return upper.replace({"MALE": "M", "FEMALE": "F"}).where(raw != "", pd.NA)
        if role is None:  # an extra column: numeric when every filled cell is a number
            numbers = pd.to_numeric(raw.where(raw != ""), errors="coerce")
            if (numbers.notna() | (raw == "")).all():
                if column not in self._numbers:  # inf and 1e999 are errors, reported once
                    self._numbers[column] = self._parse_numbers(raw, column)
                return self._numbers[column].copy()
        return raw.where(raw != "", pd.NA)

    def _extra_columns(self) -> list[str]:
        known = {n.upper() for names in self.columns.candidates.values() for n in names}
        known |= {"_LINE", "ID", "PARAM", "DVID", "CMT", "ANALYTE", "BLQFL", "BLQFN", "DOSEA",
                  "PARAMN"}
        return [c for c in self.f.columns if c.upper() not in known]

    def _events(self, is_event, time) -> pd.DataFrame:
        rows = np.flatnonzero(is_event)
        out = pd.DataFrame({"subject": self.subject[rows], "time": time[rows],
                            "nominal_time": self.nominal[rows], "evid": self._evid_all()[rows]})
        # time-varying covariates: those with a value on at least one EVID 2/3 row
        for role in ("weight", "age"):
            if role in self.col:
                values = self.number(role).to_numpy()[rows]
                if not np.isnan(values).all():
                    out[role] = values
        for column in self._extra_columns():
            raw = self.f[column].astype(str)
            values = self._parse_covariate(None, column, raw).to_numpy()[rows]
            if not pd.isna(values).all():
                out[column] = values
        return in_subject_order(out, self.subject_order)

    def _evid_all(self):
        if "evid" in self.col:
            return self.number("evid").fillna(-1).to_numpy(int)
        return np.zeros(len(self.f), int)


def _number_hint(text: str) -> str:
    """Why a cell that looks numeric is not a number: a decimal comma, thousands separators."""
    text = str(text).strip()
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", text):
        return f" (thousands separators? write {text.replace(',', '')})"
    if re.fullmatch(r"[-+]?\d*,\d+", text):
        return f" (a decimal comma? write {text.replace(',', '.')})"
    if "\u2212" in text:
        return f" (a Unicode minus sign; write {text.replace(chr(0x2212), '-')})"
    if re.fullmatch(r"[-+]?\d{1,3}([ \u00a0\u202f]\d{3})+(\.\d+)?", text):
        return f" (spaces between digit groups? write {re.sub(r'[ \u00a0\u202f]', '', text)})"
    power = re.fullmatch(r"([-+]?\d+(?:\.\d+)?)\s*[x×*]\s*10\s*(?:\^|\*\*)\s*([-+]?\d+)", text)
    if power:
        return f" (write powers of ten as {power.group(1)}e{power.group(2)})"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}([ T].*)?|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}", text):
        return " (a date? give the time since the first dose as a number)"
    return ""


def _ascii_near_miss(name: str):
    """The catalogue analyte a non-ASCII name would be without its accents or non-ASCII letters
    ('transgené', 'il6é'), else None."""
    if name.isascii():
        return None
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    stripped = "".join(ch for ch in name if ch.isascii())
    return catalogue.lookup(folded) or catalogue.lookup(stripped)


def _dtype(role):
    return {"weight": float, "age": float, "lymphodepletion": "boolean"}.get(role, object)


def _typed(values: list, index, dtype) -> pd.Series:
    """Series of `dtype` where pd.NA becomes NaN for float columns."""
    if dtype is float or pd.api.types.is_float_dtype(dtype):
        return pd.Series([np.nan if v is pd.NA else v for v in values], index=index, dtype=float)
    return pd.Series(values, index=index, dtype=dtype)


def _sorted_by_subject_time(obs: pd.DataFrame) -> bool:
    return all(g["time"].is_monotonic_increasing for _, g in obs.groupby("subject", sort=False))


def _product(text: str):
    key = re.sub(r"[\s\-_+,]|CAR-?T?", "/", str(text).upper()).strip("/")
    targets = {t for t in key.split("/") if t}
    if targets == {"CD19"}:
        return "CD19"
    if targets == {"CD19", "BCMA"}:
        return "CD19/BCMA"
    if targets == {"CD19", "CD20"}:
        return "CD19/CD20"
    return str(text).strip()


def format_dose(amount: float, unit: str) -> str:
    """Dose-level label as trials print it: '3.0e8 cells', '1.0e6 cells/kg', '100 mg'."""
    if amount is None or not np.isfinite(amount):
        return "unknown"
    if not str(unit).startswith("cells"):
        return f"{amount:g} {unit}"
    mantissa, exponent = f"{amount:.1e}".split("e")
    return f"{mantissa}e{int(exponent)} {unit}"


def catalogue_role(role: str) -> str:
    from .mapping import ROLES

    return ROLES.get(role, role)
