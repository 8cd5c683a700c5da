"""Data layer: read, validate and write CAR-T cohort datasets (NONMEM style or CDISC ADaM)."""

from .cohort import Cohort
from .mapping import ADAM, FORMATS, NONMEM, ROLES, ColumnMapping, detect_format
from .read import PRODUCTS, CheckResult, check_file, format_dose, read_cohort
from .report import DataError, Finding, Report
from .write import to_adam_frame, to_nonmem_frame, write_adam, write_nonmem


def write_cohort(cohort: Cohort, path, format: str):
    """Write `cohort` to `path` as 'nonmem' or 'adam'."""
    writers = {"nonmem": write_nonmem, "adam": write_adam}
    if format not in writers:
        raise ValueError(f"unknown format {format!r}: use 'nonmem' or 'adam'")
    return writers[format](cohort, path)


__all__ = ["Cohort", "CheckResult", "ColumnMapping", "DataError", "Finding", "Report", "ROLES",
           "FORMATS", "NONMEM", "ADAM", "PRODUCTS", "check_file", "read_cohort", "write_cohort",
           "write_nonmem", "write_adam", "to_nonmem_frame", "to_adam_frame", "detect_format",
           "format_dose"]
