"""The HTML report of a fit."""

from .html import SECTIONS, write_report

__all__ = ["SECTIONS", "write_report"]
