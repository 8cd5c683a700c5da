"""Findings of data validation: every problem at once, each located and with a fix."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Literal

import pandas as pd

Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class Finding:
    """One problem in a data file: where it is, what is wrong, how to fix it."""

    severity: Severity
    rule: str  # stable identifier, e.g. "non-numeric"
    message: str
    fix: str = ""
    file: str | None = None
    line: int | None = None  # line number in the file (the header is line 1)
    column: str | None = None
    subject: str | None = None

    def location(self) -> str:
        parts = [self.file or "<data>"]
        if self.line is not None:
            parts[0] += f":{self.line}"
        if self.column:
            parts.append(f"column {self.column}")
        if self.subject is not None:
            parts.append(f"subject {self.subject}")
        return ", ".join(parts)

    def __str__(self) -> str:
        text = f"{self.severity.upper()} {self.location()}: {self.message}"
        return text + (f" Fix: {self.fix}" if self.fix else "")


@dataclass
class Report:
    """All findings for one file; `ok` is False when any finding is an error."""

    file: str | None = None
    findings: list[Finding] = field(default_factory=list)

    def add(self, severity: Severity, rule: str, message: str, fix: str = "", *, line=None,
            column=None, subject=None) -> None:
        self.findings.append(Finding(severity, rule, message, fix, self.file,
                                     None if line is None else int(line), column,
                                     None if subject is None else str(subject)))

    def extend(self, findings: Iterable[Finding]) -> None:
        self.findings.extend(findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_frame(self) -> pd.DataFrame:
        cols = ["severity", "rule", "file", "line", "column", "subject", "message", "fix"]
        return pd.DataFrame([{c: getattr(f, c) for c in cols} for f in self.findings], columns=cols)

    def summary(self) -> str:
        n = Counter(f.severity for f in self.findings)
        return (f"{self.file or '<data>'}: {n['error']} error(s), {n['warning']} warning(s), "
                f"{n['note']} note(s)")

    def format(self, max_per_rule: int = 20) -> str:
        """Plain-text report; at most `max_per_rule` lines per rule, then a count of the rest."""
        lines, shown = [], Counter()
        order = {"error": 0, "warning": 1, "note": 2}
        for f in sorted(self.findings, key=lambda f: (order[f.severity], f.line or 0)):
            shown[f.rule] += 1
            if shown[f.rule] <= max_per_rule:
                lines.append(str(f))
        for rule, count in shown.items():
            if count > max_per_rule:
                lines.append(f"... and {count - max_per_rule} more '{rule}' finding(s)")
        lines.append(self.summary())
        return "\n".join(lines)


class DataError(ValueError):
    """Raised when a data file has errors; `.report` holds every finding."""

    def __init__(self, report: Report):
        self.report = report
        super().__init__(report.format(max_per_rule=5))
