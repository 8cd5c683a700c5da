"""The analytes CAR-T trials measure, each with its canonical unit.

Every value in a Cohort is held in its analyte's canonical unit; readers convert
with pint and reject units of the wrong dimension. An analyte not in this
catalogue is accepted when its unit is declared (a UNIT/AVALU column or the
`units=` argument of the readers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .units import UnitError, conversion_factor, parse_unit


@dataclass(frozen=True)
class Analyte:
    name: str  # identifier used throughout pkpd (snake case)
    label: str  # human-readable, written to ADaM PARAM
    paramcd: str  # ADaM PARAMCD (8 characters at most)
    dvid: int  # NONMEM DVID code written by pkpd
    unit: str  # canonical unit
    kind: str  # "ck" (cellular kinetics), "cytokine", "bcell", "ig", "autoantibody", "adverse_event", "other"
    aliases: tuple[str, ...] = field(default=())
    lloq: float | None = None  # typical assay LLOQ, used when simulating (recalled, not a cited value)

    def factor_from(self, unit: str) -> float:
        """Factor taking a value in `unit` to this analyte's canonical unit (UnitError if impossible)."""
        return conversion_factor(unit, self.unit)


CATALOGUE: tuple[Analyte, ...] = (
    Analyte("transgene", "CAR transgene (qPCR)", "CARTGENE", 1, "copies/ug", "ck",
            ("CAR transgene", "transgene", "CARTG", "TG", "CAR qPCR", "qPCR", "copies"), lloq=50.0),
    Analyte("cart_cells", "CAR-T cells (flow)", "CARTCELL", 2, "cells/uL", "ck",
            ("CAR-T cells", "CAR T cells", "CART", "CAR+ cells", "CARTCELLS"), lloq=0.5),
    Analyte("il2", "Interleukin-2", "IL2", 3, "pg/mL", "cytokine", ("IL-2", "interleukin 2"), lloq=2.0),
    Analyte("il6", "Interleukin-6", "IL6", 4, "pg/mL", "cytokine", ("IL-6", "interleukin 6"), lloq=1.5),
    Analyte("il10", "Interleukin-10", "IL10", 5, "pg/mL", "cytokine", ("IL-10", "interleukin 10"), lloq=1.5),
    Analyte("ifng", "Interferon gamma", "IFNG", 6, "pg/mL", "cytokine",
            ("IFN-gamma", "IFN gamma", "IFNg", "interferon gamma", "IFN-γ"), lloq=1.5),
    Analyte("bcells", "CD19+ B cells", "CD19B", 7, "cells/uL", "bcell",
            ("CD19+ B cells", "B cells", "BCELL", "BCELLS", "CD19", "CD19 B cells"), lloq=1.0),
    Analyte("igg", "Immunoglobulin G", "IGG", 8, "g/L", "ig", ("IgG", "immunoglobulin G"), lloq=0.5),
    Analyte("igm", "Immunoglobulin M", "IGM", 9, "g/L", "ig", ("IgM", "immunoglobulin M"), lloq=0.05),
    Analyte("iga", "Immunoglobulin A", "IGA", 10, "g/L", "ig", ("IgA", "immunoglobulin A"), lloq=0.05),
    Analyte("ige", "Immunoglobulin E", "IGE", 11, "IU/mL", "ig", ("IgE", "immunoglobulin E"), lloq=2.0),
    Analyte("anti_dsdna", "Anti-dsDNA antibodies", "ADSDNA", 12, "IU/mL", "autoantibody",
            ("anti-dsDNA", "anti dsDNA", "dsDNA", "ANTIDSDNA"), lloq=10.0),
    # adverse events: one record per assessment or onset, DV the grade (0 = assessed, none;
    # ASTCT consensus grading, Lee DW et al., Biol Blood Marrow Transplant 2019;25:625)
    Analyte("crs", "Cytokine release syndrome grade (ASTCT)", "CRSGR", 13, "grade", "adverse_event",
            ("CRS", "CRS grade", "cytokine release syndrome", "CRSGRADE")),
    Analyte("icans", "ICANS grade (ASTCT)", "ICANSGR", 14, "grade", "adverse_event",
            ("ICANS", "ICANS grade", "neurotoxicity", "ICANSGRADE")),
)

#: the largest grade an adverse-event record may carry (CTCAE grade 5: death)
MAX_GRADE = 5


def _key(text: str) -> str:
    """Lookup key: case and punctuation ignored, letters of any script kept (so that 'IL-6é' is
    not read as IL-6)."""
    return re.sub(r"[\W_]", "", str(text).casefold().replace("γ", "gamma"))


_BY_KEY: dict[str, Analyte] = {}
for _a in CATALOGUE:
    for _name in (_a.name, _a.label, _a.paramcd, *_a.aliases):
        _BY_KEY[_key(_name)] = _a
_BY_DVID = {a.dvid: a for a in CATALOGUE}
BY_NAME = {a.name: a for a in CATALOGUE}


def lookup(text) -> Analyte | None:
    """The catalogue analyte named by `text` (name, PARAMCD, label or alias), else None."""
    return _BY_KEY.get(_key(text))


def lookup_dvid(code) -> Analyte | None:
    """The catalogue analyte with pkpd's NONMEM DVID code, else None."""
    try:
        return _BY_DVID.get(int(float(code)))
    except (TypeError, ValueError):
        return None


def custom(name: str, unit: str) -> Analyte:
    """An analyte outside the catalogue, with its declared unit (UnitError if the unit is unknown)."""
    parse_unit(unit)
    return Analyte(name=str(name), label=str(name), paramcd=str(name), dvid=0, unit=str(unit),
                   kind="other")


__all__ = ["Analyte", "CATALOGUE", "BY_NAME", "lookup", "lookup_dvid", "custom", "UnitError"]
