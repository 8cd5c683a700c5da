"""Write a Cohort back to NONMEM-style or ADaM-style CSV without loss.

Reading what these writers produce gives back an equal Cohort (tested as a
property). Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .._files import atomic_path
from .cohort import Cohort

# at equal times: covariate changes, then the dose, then the samples (which see the dose: pkpd's
# rule, and NONMEM's in this record order)
_KIND_ORDER = {"event": 0, "dose": 1, "obs": 2}
TIME_UNIT_NAMES = {"min": "MINUTES", "h": "HOURS", "d": "DAYS", "w": "WEEKS"}
_REGIMEN = (("cmt", "CMT"), ("rate", "RATE"), ("duration", "DUR"), ("ii", "II"), ("addl", "ADDL"), ("ss", "SS"))


def write_nonmem(cohort: Cohort, path: str | Path) -> Path:
    """NONMEM-style CSV: ID TIME NTIME TIMEU AMT AMTU [RATE DUR II ADDL SS] DV MDV EVID CMT DVID
    ANALYTE UNIT CENS LLOQ [LIMIT] then covariates; '.' marks a missing value."""
    frame = to_nonmem_frame(cohort)
    return _write(frame, path, na_rep=".")


def write_adam(cohort: Cohort, path: str | Path) -> Path:
    """ADaM-style (ADPC/ADPPK) CSV: USUBJID AFRLT NFRLT RRLTU EVID AMT DOSEU [CMT RATE DUR II ADDL
    SS] PARAMCD PARAM AVAL AVALU ALLOQ BLQFL BLQFN then baseline covariates (WTBL, AGE, SEX, ...)."""
    frame = to_adam_frame(cohort)
    return _write(frame, path, na_rep="")


def _write(frame: pd.DataFrame, path, na_rep) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, na_rep=na_rep)
    return Path(path)


def _codes(cohort: Cohort) -> dict[str, int]:
    codes, next_code = {}, 101
    for name, analyte in cohort.analytes.items():
        if analyte.dvid:
            codes[name] = analyte.dvid
        else:
            codes[name], next_code = next_code, next_code + 1
    return codes


def _subject_ids(cohort: Cohort) -> tuple[dict[str, int], bool]:
    labels = [str(s) for s in cohort.subject_ids]
    if all(s.isdigit() and not (len(s) > 1 and s.startswith("0")) for s in labels):
        return {s: int(s) for s in labels}, False
    return {s: i + 1 for i, s in enumerate(labels)}, True


def _long_records(cohort: Cohort) -> pd.DataFrame:
    """Observations, doses and events stacked in file order, with a 'kind' column."""
    obs = cohort.observations.assign(kind="obs", evid=0)
    doses = cohort.doses.assign(kind="dose")
    events = cohort.events.assign(kind="event")
    rows = pd.concat([obs, doses, events], ignore_index=True, sort=False)
    order = {s: i for i, s in enumerate(cohort.subject_ids)}
    rows["_s"] = rows["subject"].map(order)
    rows["_k"] = rows["kind"].map(_KIND_ORDER)
    return rows.sort_values(["_s", "time", "_k"], kind="stable").reset_index(drop=True)


def _covariates(cohort: Cohort, rows: pd.DataFrame, names: dict[str, str], ld_values) -> pd.DataFrame:
    """Covariate columns for every row: baseline values, overridden on EVID 2/3 rows by the
    time-varying values of the events table."""
    subj = cohort.subjects
    out = pd.DataFrame(index=rows.index)
    # each row's subject as a position in cohort.subjects: one take per column instead of a
    # lookup of every row's subject (pandas 3's string columns look up row by row in Python)
    position = subj.index.get_indexer(rows["subject"])
    for column in subj.columns:
        if subj[column].isna().all() and column in names:
            continue  # a standard role the file never had
        per_subject = subj[column]
        if column == "lymphodepletion":
            per_subject = pd.Series([pd.NA if pd.isna(v) else (ld_values[0] if v else ld_values[1])
                                     for v in per_subject], index=subj.index, dtype=object)
        values = per_subject.take(position).set_axis(rows.index) if (position >= 0).all() \
            else rows["subject"].map(per_subject)  # a row of a subject without a subjects entry
        if column in rows.columns and column not in ("subject", "time"):
            event_value = rows[column]
            is_event = rows["kind"] == "event"
            values = values.astype(object).where(~is_event | event_value.isna(), event_value)
        out[names.get(column, column)] = values
    return out


def _regimen_columns(cohort: Cohort) -> list[tuple[str, str]]:
    """The dosing columns this cohort needs (those with a value on some dose)."""
    doses = cohort.doses
    used = {"cmt": (doses["cmt"].astype(str) != "").any(), "rate": doses["rate"].notna().any(),
            "duration": doses["duration"].notna().any(), "ii": doses["ii"].notna().any(),
            "addl": (doses["addl"] > 0).any(), "ss": (doses["ss"] > 0).any()}
    return [(column, name) for column, name in _REGIMEN if used[column]]


def _regimen_values(rows: pd.DataFrame, column: str, is_dose) -> pd.Series:
    values = rows[column].where(is_dose)
    if column == "cmt":
        return values.where(values.astype(str) != "", pd.NA)
    return values.astype("Int64") if column in ("addl", "ss") else values


def to_nonmem_frame(cohort: Cohort) -> pd.DataFrame:
    rows = _long_records(cohort)
    ids, with_label = _subject_ids(cohort)
    codes = _codes(cohort)
    is_obs, is_dose = rows["kind"] == "obs", rows["kind"] == "dose"
    frame = pd.DataFrame({"ID": rows["subject"].map(ids)})
    if with_label:
        frame["USUBJID"] = rows["subject"]
    frame["TIME"] = rows["time"]
    frame["NTIME"] = rows["nominal_time"]
    frame["TIMEU"] = TIME_UNIT_NAMES[cohort.time_unit]
    frame["AMT"] = np.where(is_dose, rows["amount"], 0.0)
    frame["AMTU"] = rows["unit"].where(is_dose)
    for column, name in _regimen_columns(cohort):
        if column != "cmt":
            frame[name] = _regimen_values(rows, column, is_dose)
    frame["DV"] = rows["value"].where(is_obs)
    frame["MDV"] = np.where(is_obs, rows["mdv"].fillna(False).astype(bool).astype(int), 1)
    frame["EVID"] = rows["evid"].astype(int)
    # observations: the analyte's code; doses: the receiving state as written ('.' = the model's default)
    dose_cmt = rows["cmt"].where(is_dose & (rows["cmt"].astype(str) != ""), pd.NA) if "cmt" in rows else pd.NA
    dvid = rows["analyte"].map(codes).where(is_obs).astype("Int64")
    frame["CMT"] = dvid.astype(object).where(is_obs, dose_cmt)
    frame["DVID"] = dvid
    frame["ANALYTE"] = rows["analyte"].where(is_obs)
    frame["UNIT"] = rows["analyte"].map({name: analyte.unit for name, analyte in cohort.analytes.items()})
    frame["CENS"] = rows["censored"].where(is_obs).fillna(0).astype(int)
    frame["LLOQ"] = rows["lloq"].where(is_obs)
    if cohort.observations["limit"].notna().any():
        frame["LIMIT"] = rows["limit"].where(is_obs)
    names = {"dose_level": "DOSELVL", "product": "PRODUCT", "lymphodepletion": "LD",
             "disease": "DISEASE", "weight": "WT", "age": "AGE", "sex": "SEX"}
    return pd.concat([frame, _covariates(cohort, rows, names, (1, 0))], axis=1)


def to_adam_frame(cohort: Cohort) -> pd.DataFrame:
    rows = _long_records(cohort)
    is_obs, is_dose = rows["kind"] == "obs", rows["kind"] == "dose"
    analyte = rows["analyte"].where(is_obs)
    left = is_obs & (rows["censored"] == 1)
    frame = pd.DataFrame({
        "USUBJID": rows["subject"], "AFRLT": rows["time"], "NFRLT": rows["nominal_time"],
        "RRLTU": TIME_UNIT_NAMES[cohort.time_unit], "EVID": rows["evid"].astype(int),
        "AMT": rows["amount"].where(is_dose), "DOSEU": rows["unit"].where(is_dose),
        **{name: _regimen_values(rows, column, is_dose) for column, name in _regimen_columns(cohort)},
        "PARAMCD": analyte.map({name: a.paramcd for name, a in cohort.analytes.items()}),
        "PARAM": analyte.map({name: a.label for name, a in cohort.analytes.items()}),
        "AVAL": rows["value"].where(is_obs & ~left),
        "AVALU": analyte.map({name: a.unit for name, a in cohort.analytes.items()}),
        "ALLOQ": rows["lloq"].where(is_obs),
        "BLQFL": np.where(left, "Y", np.where(is_obs, "N", "")),
        "BLQFN": pd.Series(np.where(left, 1, 0), index=rows.index).where(is_obs).astype("Int64"),
    })
    if (cohort.observations["censored"] == -1).any():
        frame["CENS"] = rows["censored"].where(is_obs).astype("Int64")
    if cohort.observations["limit"].notna().any():
        frame["LIMIT"] = rows["limit"].where(is_obs)
    if cohort.observations["mdv"].any():
        frame["MDV"] = np.where(is_obs, rows["mdv"].fillna(False).astype(bool).astype(int), 1)
    names = {"dose_level": "DOSELVL", "product": "PRODUCT", "lymphodepletion": "LDFL",
             "disease": "DISEASE", "weight": "WTBL", "age": "AGE", "sex": "SEX"}
    return pd.concat([frame, _covariates(cohort, rows, names, ("Y", "N"))], axis=1)
