"""Column roles: which column of a file plays which part.

Each format declares, per role, the column names it accepts (first match wins).
A user with other names passes their own: `mapping={"subject": "PATID"}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

#: Roles and what they mean (shown by `pkpd data check --help` and in errors).
ROLES: Mapping[str, str] = MappingProxyType({
    "subject": "subject identifier",
    "subject_label": "subject label kept beside a numeric NONMEM ID",
    "time": "actual time since the first dose (negative before it)",
    "nominal_time": "nominal (planned) time, used for binning",
    "time_unit": "unit of the time columns (per row)",
    "dv": "observed value",
    "amt": "dose amount (CAR+ cells, cells/kg, mg, mg/kg, ...)",
    "dose_per_subject": "dose amount repeated on every row (ADaM DOSEA) when there are no dose rows",
    "dose_unit": "unit of the dose amount: cells, cells/kg, mg, mg/kg, ug, ...",
    "rate": "infusion rate (amount per time unit; 0 or blank: bolus)",
    "duration": "infusion duration (time unit of TIME; 0 or blank: bolus)",
    "ii": "interval between repeated doses (with ADDL or SS)",
    "addl": "number of additional doses at interval II",
    "ss": "steady state: 1 = the subject is at steady state of this regimen before the dose",
    "evid": "event identifier: 0 observation, 1 dose, 2 other, 3 reset, 4 reset and dose",
    "mdv": "missing dependent variable flag",
    "cmt": "compartment: the state receiving a dose; on observations, the analyte when there is no DVID",
    "dvid": "analyte code",
    "analyte": "analyte name or code",
    "analyte_label": "analyte label (ADaM PARAM)",
    "unit": "unit of the observed value",
    "cens": "censoring flag: 1 below the LLOQ (DV holds the LLOQ), -1 above the ULOQ, 0 none",
    "limit": "lower limit of a censored interval (NONMEM LIMIT)",
    "blq": "below-LLOQ flag (Y/N or 1/0)",
    "lloq": "lower limit of quantification",
    "weight": "body weight (kg)",
    "age": "age (years)",
    "sex": "sex",
    "product": "CAR-T product / target: CD19, CD19/BCMA or CD19/CD20",
    "lymphodepletion": "lymphodepleting chemotherapy given (yes/no)",
    "disease": "disease (e.g. SLE, lupus nephritis, systemic sclerosis)",
    "dose_level": "dose level label",
})


@dataclass(frozen=True)
class ColumnMapping:
    """Accepted column names per role, and the roles a file must have."""

    format: str
    candidates: Mapping[str, tuple[str, ...]]
    required: tuple[str, ...]
    #: groups of roles of which at least one must be present
    one_of: tuple[tuple[str, ...], ...] = field(default=())

    def with_overrides(self, overrides: Mapping[str, str] | None) -> "ColumnMapping":
        """A copy where each role in `overrides` is played by exactly the given column."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown column role(s) {', '.join(unknown)} in the mapping; "
                             f"known roles: {', '.join(ROLES)}")
        merged = dict(self.candidates)
        merged.update({role: (str(col),) for role, col in overrides.items()})
        return ColumnMapping(self.format, MappingProxyType(merged), self.required, self.one_of)

    def resolve(self, columns) -> dict[str, str]:
        """role -> column present in `columns` (case-insensitive match, file's spelling kept)."""
        by_upper = {str(c).upper(): c for c in columns}
        found = {}
        for role, names in self.candidates.items():
            for name in names:
                if name.upper() in by_upper:
                    found[role] = by_upper[name.upper()]
                    break
        return found


NONMEM = ColumnMapping(
    format="nonmem",
    candidates=MappingProxyType({
        "subject": ("ID",),
        "subject_label": ("USUBJID", "SUBJID"),
        "time": ("TIME", "TAFD", "TAD"),
        "nominal_time": ("NTIME", "NOMTIME", "NTAFD", "NFRLT"),
        "time_unit": ("TIMEU", "TIMEUNIT"),
        "dv": ("DV",),
        "amt": ("AMT",),
        "dose_unit": ("AMTU", "DOSEU"),
        "evid": ("EVID",),
        "mdv": ("MDV",),
        "cmt": ("CMT",),
        "rate": ("RATE",),
        "duration": ("DUR",),
        "ii": ("II",),
        "addl": ("ADDL",),
        "ss": ("SS",),
        "dvid": ("DVID", "YTYPE"),
        "analyte": ("ANALYTE", "DVNAME", "PARAMCD"),
        "unit": ("UNIT", "DVU", "DVUNIT"),
        "cens": ("CENS",),
        "limit": ("LIMIT",),
        "blq": ("BLQ", "BLQFL", "BLQFN"),
        "lloq": ("LLOQ", "LOQ"),
        "weight": ("WT", "WEIGHT", "BW", "WTBL"),
        "age": ("AGE", "AGEBL"),
        "sex": ("SEX",),
        "product": ("PRODUCT", "TARGET"),
        "lymphodepletion": ("LD", "LDFL", "LYMPHODEP"),
        "disease": ("DISEASE", "DIAG"),
        "dose_level": ("DOSELVL", "DOSEGRP", "DOSE_LEVEL"),
    }),
    required=("subject", "time", "dv", "amt"),
    one_of=(("analyte", "dvid", "cmt"),),
)

ADAM = ColumnMapping(
    format="adam",
    candidates=MappingProxyType({
        "subject": ("USUBJID",),
        "time": ("AFRLT", "ARELTM"),
        "nominal_time": ("NFRLT", "NRELTM"),
        "time_unit": ("RRLTU", "AFRLTU", "TIMEU"),
        "dv": ("AVAL",),
        "amt": ("AMT",),
        "dose_per_subject": ("DOSEA",),
        "dose_unit": ("DOSEU", "AMTU"),
        "evid": ("EVID",),
        "mdv": ("MDV",),
        "cmt": ("CMT",),
        "rate": ("RATE",),
        "duration": ("DUR", "EXDUR"),
        "ii": ("II",),
        "addl": ("ADDL",),
        "ss": ("SS",),
        "analyte": ("PARAMCD",),
        "analyte_label": ("PARAM",),
        "unit": ("AVALU",),
        "cens": ("CENS",),
        "limit": ("LIMIT",),
        "blq": ("BLQFN", "BLQFL"),
        "lloq": ("ALLOQ", "LLOQ"),
        "weight": ("WTBL", "WT", "WEIGHTBL"),
        "age": ("AGE", "AGEBL"),
        "sex": ("SEX",),
        "product": ("PRODUCT", "TARGET", "PRODTARG"),
        "lymphodepletion": ("LDFL", "LD", "LYMPHODEP"),
        "disease": ("DISEASE", "DIAGBL", "DIAG"),
        "dose_level": ("DOSELVL", "DOSEGRP"),
    }),
    required=("subject", "time", "dv"),
    one_of=(("analyte", "analyte_label"), ("amt", "dose_per_subject")),
)

FORMATS: Mapping[str, ColumnMapping] = MappingProxyType({"nonmem": NONMEM, "adam": ADAM})


def detect_format(columns) -> str | None:
    """'adam' or 'nonmem' from the header, or None when neither fits."""
    upper = {str(c).upper() for c in columns}
    if "USUBJID" in upper and ({"AVAL", "PARAMCD", "PARAM", "AFRLT"} & upper):
        return "adam"
    if {"ID", "DV"} <= upper or {"ID", "TIME"} <= upper:
        return "nonmem"
    return None
