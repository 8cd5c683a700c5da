"""Units: one pint registry with the counting units CAR-T assays report.

Transgene copy number is reported per microgram of genomic DNA; we treat
"copies" and "cells" as their own dimensions so that copies/ug can never be
converted into cells/uL by accident. Text written by labs ("copies/µg gDNA",
"cells/µL", "10^9/L") is normalised before pint parses it.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from functools import lru_cache

import pint

from ._cache import cache_root


def _registry() -> pint.UnitRegistry:
    """pint's registry, its parsed definitions kept in pint's disk cache: parsing them costs 0.27 s
    of every start, loading them 0.05 s. pint writes the cache without locking: a process that
    meets another's half-written (or otherwise damaged) file builds the registry from the
    definitions instead and removes the cache, which the next start writes again."""
    folder = cache_root() / "pint"
    try:
        return pint.UnitRegistry(cache_folder=folder)
    except Exception:  # noqa: BLE001 - any failure of the cache: the uncached registry is the same registry
        shutil.rmtree(folder, ignore_errors=True)
        return pint.UnitRegistry()


ureg = _registry()
ureg.define("copies = [copy_number] = copy")
ureg.define("cells = [cell_count] = cell")
ureg.define("IU = [international_unit] = iu")
ureg.define("grade = [toxicity_grade]")   # adverse-event grades (ASTCT, CTCAE): counted, never converted

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


_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d{1,2})?)|(?P<name>[A-Za-z_%°][A-Za-z0-9_]*)"
                    r"|(?P<power>\*\*|\^)|(?P<op>[*/·])|(?P<open>\()|(?P<close>\)))")
_MAX_UNIT_LENGTH = 64


def check_unit_grammar(text: str) -> None:
    """Accept only unit syntax: names (mg, cells, uL, %), plain scale numbers (1e9), '*', '/',
    '.', parentheses and small integer powers (m^2, h**-1). A unit is never evaluated as
    arithmetic: '2**2**99' or '9*9*9' is not a unit. Raises UnitError naming what is wrong."""
    if len(text) > _MAX_UNIT_LENGTH:
        raise UnitError(f"unit {text[:24]!r}... is longer than {_MAX_UNIT_LENGTH} characters")
    position, depth, previous, numbers = 0, 0, "start", 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            if text[position:].strip() == "":
                break
            raise UnitError(f"unit {text!r}: unexpected {text[position:position + 8]!r}")
        kind = match.lastgroup
        if kind == "power":
            exponent = re.match(r"\s*(-?\d{1,2})(?![\d.eE*^])", text[match.end():])
            if previous not in ("name", "close") or exponent is None:
                raise UnitError(f"unit {text!r}: a power must be a small whole number after a unit name, "
                                "as in m^2 or h^-1")
            position = match.end() + exponent.end()
            previous = "exponent"
            continue
        if kind == "number":
            numbers += 1
            if numbers > 1 or previous in ("name", "number", "close", "exponent"):
                raise UnitError(f"unit {text!r}: a unit holds at most one scale number (as in 1e9/L), "
                                "not arithmetic")
        if kind == "open":
            depth += 1
            if depth > 2:
                raise UnitError(f"unit {text!r}: too many nested parentheses")
        if kind == "close":
            depth -= 1
            if depth < 0:
                raise UnitError(f"unit {text!r}: a ')' without its '('")
        previous = kind
        position = match.end()
    if depth:
        raise UnitError(f"unit {text!r}: a '(' is not closed")


@lru_cache(maxsize=256)
def parse_unit(text: str) -> pint.Quantity:
    """Parse a unit as written in a dataset (after the grammar check, never as arithmetic);
    raise UnitError if it is not a unit pint knows."""
    if text is None or str(text).strip() == "":
        raise UnitError("empty unit")
    normalised = normalise_unit_text(text)
    check_unit_grammar(normalised)
    try:
        parsed = ureg.parse_expression(normalised)
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


#: time units a dataset or a model may use, with their length in days
TIME_UNITS = {"min": 1 / 1440, "h": 1 / 24, "d": 1.0, "w": 7.0}
_TIME_SPELLING = {"min": "min", "mins": "min", "minute": "min", "minutes": "min",
                  "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
                  "d": "d", "day": "d", "days": "d", "w": "w", "wk": "w", "wks": "w", "week": "w",
                  "weeks": "w"}


def time_unit(text: str) -> str | None:
    """'HOURS' -> 'h', 'days' -> 'd', ...; None when the text is not a time unit."""
    return _TIME_SPELLING.get(str(text).strip().lower())


def time_factor(source: str, target: str) -> float:
    """Multiply a time in `source` units ('min', 'h', 'd', 'w') by this to get `target` units."""
    for unit in (source, target):
        if unit not in TIME_UNITS:
            raise UnitError(f"unknown time unit {unit!r}: use one of {', '.join(TIME_UNITS)}")
    return TIME_UNITS[source] / TIME_UNITS[target]


def time_unit_name(text: str) -> str | None:
    """'hour', 'h', 'hr' -> 'h'; a pint unit name of time in pkpd's spelling, else None."""
    short = time_unit(text)
    if short is not None:
        return short
    try:
        check_unit_grammar(str(text))
        unit = ureg.Unit(str(text))
    except Exception:  # not a unit name at all
        return None
    if unit.dimensionality != ureg.Unit("s").dimensionality:
        return None
    for code, name in (("min", "minute"), ("h", "hour"), ("d", "day"), ("w", "week")):
        if unit == ureg.Unit(name):
            return code
    return str(unit)


@dataclass(frozen=True)
class DoseUnit:
    """A dose unit as written ('mg/kg'): the absolute unit ('mg') and whether it is per kg of
    body weight (then the absolute amount is amount x weight)."""

    text: str
    absolute: str
    per_kg: bool


_CELLS = re.compile(r"^(car\+?\s*)?(viable\s*)?(car-?)?(t[\s-]*)?cells?$", re.I)


def dose_unit(text: str) -> DoseUnit | None:
    """Parse a dose unit: cells, cells/kg, any amount pint reads (mg, ug, mmol, IU, copies,
    or a unit declared with `define`), optionally per kg. None when it cannot be read."""
    raw = str(text).strip()
    per_kg = False
    body = raw
    match = re.fullmatch(r"(.*?)\s*(/\s*kg|per\s*kg)", raw, re.I)
    if match:
        body, per_kg = match.group(1).strip() or "cells", True
    if not body or _CELLS.match(body.replace("_", " ")):
        absolute = "cells"
    else:
        try:
            parsed = parse_unit(body)
        except UnitError:
            return None
        if parsed.dimensionless or "[time]" in str(parsed.dimensionality) or \
                "[length]" in str(parsed.dimensionality):
            return None  # a number, a rate or a volume is not an amount
        absolute = normalise_unit_text(body)
    return DoseUnit(f"{absolute}/kg" if per_kg else absolute, absolute, per_kg)


def define(definition: str) -> None:
    """Declare a unit pint does not know, e.g. define('vg = [vector_genome]') for vector genomes,
    before reading data or models that use it."""
    try:
        ureg.define(definition)
    except Exception as exc:  # pint raises several types for a malformed definition
        raise UnitError(f"cannot define unit {definition!r}: {exc}") from exc
    parse_unit.cache_clear()
    conversion_factor.cache_clear()


def same_unit(a: str, b: str) -> bool:
    """True when two unit strings mean the same unit (factor 1)."""
    try:
        return abs(conversion_factor(a, b) - 1.0) < 1e-12
    except UnitError:
        return False
