"""Units: one pint registry with the counting units CAR-T assays report.

Transgene copy number is reported per microgram of genomic DNA; we treat
"copies" and "cells" as their own dimensions so that copies/ug can never be
converted into cells/uL by accident. Text written by labs ("copies/µg gDNA",
"cells/µL", "10^9/L") is normalised before pint parses it.
"""

from __future__ import annotations

import re
from functools import lru_cache

import pint

ureg = pint.UnitRegistry()
ureg.define("copies = [copy_number] = copy")
ureg.define("cells = [cell_count] = cell")
ureg.define("IU = [international_unit] = iu")

_SPELLING = [
    (re.compile(r"[µμ]"), "u"),
    (re.compile(r"\b(gdna|genomic\s*dna|dna)\b", re.I), ""),
    (re.compile(r"\bmcg\b", re.I), "ug"),
    (re.compile(r"\bmicrogram(s)?\b", re.I), "ug"),
    (re.compile(r"\bcopy\b|\bcopies\b", re.I), "copies"),
    (re.compile(r"\bcell\b|\bcells\b", re.I), "cells"),
    (re.compile(r"\biu\b", re.I), "IU"),
    (re.compile(r"\bml\b", re.I), "mL"),
    (re.compile(r"\bul\b", re.I), "uL"),
    (re.compile(r"\bdl\b", re.I), "dL"),
    (re.compile(r"\bl\b"), "L"),
    (re.compile(r"10\^(\d+)"), r"1e\1"),
    (re.compile(r"x\s*1e", re.I), "1e"),
]


class UnitError(ValueError):
    """A unit string that cannot be understood or converted."""


def normalise_unit_text(text: str) -> str:
    """Lab spelling -> pint spelling ("copies/µg gDNA" -> "copies/ug")."""
    out = str(text).strip()
    for pattern, repl in _SPELLING:
        out = pattern.sub(repl, out)
    out = re.sub(r"\s+", " ", out).strip()
    out = re.sub(r"\s*/\s*", "/", out)
    # "1e9/L" for cell counts means 1e9 cells per litre
    if re.fullmatch(r"1e\d+/L", out):
        out = out.replace("/L", " cells/L")
    if out.startswith("/"):
        out = "cells" + out
    return out


@lru_cache(maxsize=256)
def parse_unit(text: str) -> pint.Quantity:
    """Parse a unit as written in a dataset; raise UnitError if pint cannot read it."""
    if text is None or str(text).strip() == "":
        raise UnitError("empty unit")
    try:
        parsed = ureg.parse_expression(normalise_unit_text(text))
    except (pint.errors.UndefinedUnitError, pint.errors.DefinitionSyntaxError, AttributeError,
            TypeError, ValueError, AssertionError, SyntaxError) as exc:
        raise UnitError(f"unknown unit {text!r}") from exc
    if not isinstance(parsed, pint.Quantity):  # a bare number such as "1"
        raise UnitError(f"unknown unit {text!r}")
    return parsed


@lru_cache(maxsize=1024)
def conversion_factor(source: str, target: str) -> float:
    """Multiply a value in `source` units by this factor to express it in `target` units."""
    src, dst = parse_unit(source), parse_unit(target)
    try:
        factor = float(src.to(dst).magnitude / dst.magnitude)
        return float(f"{factor:.12g}")  # unit factors are exact decimals: drop float noise
    except pint.errors.DimensionalityError as exc:
        raise UnitError(f"cannot convert {source!r} to {target!r}: "
                        f"{src.dimensionality} is not {dst.dimensionality}") from exc


def same_unit(a: str, b: str) -> bool:
    """True when two unit strings mean the same unit (factor 1)."""
    try:
        return abs(conversion_factor(a, b) - 1.0) < 1e-12
    except UnitError:
        return False
