"""What every command shares: the consoles, the error exit, the reading options, the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as _RichTable
from rich.text import Text

from ..data.report import Report

console = Console(width=None if Console().is_terminal else 160)
err_console = Console(stderr=True)

FormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", help="Input format: nonmem or adam (default: detected from the header).")]
MapOpt = Annotated[Optional[list[str]], typer.Option("--map", help="Column for a role, ROLE=COLUMN (repeatable), e.g. --map subject=PATID.")]
UnitOpt = Annotated[Optional[list[str]], typer.Option("--unit", help="Unit of an analyte, ANALYTE=UNIT (repeatable), e.g. --unit theophylline=mg/L.")]
CodeOpt = Annotated[Optional[list[str]], typer.Option("--analyte-code", help="Analyte named by a DVID (or, without DVID, CMT) code on observation rows, CODE=NAME (repeatable), e.g. --analyte-code 2=theophylline.")]
TimeUnitOpt = Annotated[Optional[str], typer.Option("--time-unit", help="Unit of TIME when the file has no TIMEU/RRLTU column: h, d, min or w (without it: days, with a warning).")]
CommentOpt = Annotated[Optional[str], typer.Option("--comment", help="Skip rows whose first cell starts with this marker, as NONMEM's IGNORE=# does (e.g. --comment '#'); without it such rows are read as data, with a warning.")]
DoseUnitOpt = Annotated[Optional[str], typer.Option("--dose-unit", help="Unit of AMT when the file has no AMTU/DOSEU column: cells, cells/kg, mg, mg/kg, ug, ... (without it: cells, with a warning).")]


class Table(_RichTable):
    """A rich Table whose string cells are plain text: a value from a user's file ('[/]', a
    subject '[bold]x') is shown as written, never read as markup. Styled cells are Text."""

    def add_row(self, *cells, **options):
        super().add_row(*[Text(c) if isinstance(c, str) else c for c in cells], **options)


def fail(message) -> NoReturn:
    """Print an error (no traceback) and exit with status 2: bad input or arguments."""
    err_console.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)  # paths stay whole
    raise typer.Exit(2)


def pairs(values: list[str] | None, what: str, option: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            fail(f"{option} {item!r} is not of the form {what}")
        out[key.strip()] = value.strip()
    return out


def reading_options(format, maps, units, codes, time_unit, dose_unit, comment=None) -> dict:
    """The keyword arguments of pkpd.read_cohort from the shared options."""
    analyte_codes = {}
    for code, name in pairs(codes, "CODE=NAME", "--analyte-code").items():
        try:
            analyte_codes[int(float(code))] = name
        except ValueError:
            fail(f"--analyte-code {code}={name}: the code {code!r} is not a whole number")
    return dict(format=format, mapping=pairs(maps, "ROLE=COLUMN", "--map"),
                units=pairs(units, "ANALYTE=UNIT", "--unit"), analyte_codes=analyte_codes,
                time_unit=time_unit, dose_unit=dose_unit, comment=comment)


def print_report(report: Report, max_per_rule: int = 20) -> None:
    style = {"error": "bold red", "warning": "yellow", "note": "cyan"}
    order = {"error": 0, "warning": 1, "note": 2}
    counts: dict[str, int] = {}
    for f in sorted(report.findings, key=lambda f: (order[f.severity], f.line or 0)):
        counts[f.rule] = counts.get(f.rule, 0) + 1
        if counts[f.rule] > max_per_rule:
            continue
        console.print(f"[{style[f.severity]}]{f.severity.upper():7}[/] {escape(f.location())}: {escape(f.message)}"
                      + (f" [dim]Fix: {escape(f.fix)}[/]" if f.fix else ""), highlight=False, soft_wrap=True)
    for rule, n in counts.items():
        if n > max_per_rule:
            console.print(f"        ... and {n - max_per_rule} more '{rule}' finding(s)", highlight=False)
    console.print(("[green]OK[/] " if report.ok else "[bold red]FAILED[/] ") + escape(report.summary()),
                  highlight=False)


def read(file: Path, options: dict):
    """The cohort of `file`, or the report of its problems and exit status 1. Warnings (an
    assumed unit, ...) are printed too: nothing is assumed without a word."""
    from ..data import check_file

    result = check_file(file, **options)
    if result.cohort is None:
        print_report(result.report)
        raise typer.Exit(1)
    for finding in result.report.warnings:
        console.print(f"[yellow]WARNING[/] {escape(finding.location())}: {escape(finding.message)} "
                      f"[dim]Fix: {escape(finding.fix)}[/]",
                      highlight=False, soft_wrap=True)
    return result.cohort


def load_model(name: str):
    from ..models import ModelError, load

    try:
        return load(name)
    except ModelError as exc:
        fail(exc)


RunArg = Annotated[Path, typer.Argument(help="Fit run folder (written by `pkpd fit -o RUN`, or a comparison's fits/<id>; with --average the comparison folder).")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="The model (name or file) to use instead of the source recorded in the run; it must be the fitted one.")]


def load_result(folder: Path, model: str | None = None):
    """The FitResult of a run folder (the model rebuilt from its recorded source)."""
    from ..fit import FitResult
    from ..fit.run import RunError

    try:
        return FitResult.load(folder, load_model(model) if model else None)
    except RunError as exc:
        fail(exc)


AverageOpt = Annotated[bool, typer.Option("--average", help="RUN is a comparison folder: predict from the stacking-weighted mixture of its converged fits (model averaging).")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="With --average: the comparison's dataset whose fits are averaged (needed when it has several).")]
WeighOpt = Annotated[bool, typer.Option("--weigh-unconverged", help="With --average: give fits that failed their diagnostics weights too.")]


def load_fit_or_average(run: Path, model: str | None, average: bool, dataset: str | None, weigh_unconverged: bool):
    """The FitResult of a run folder, or with `average` the ModelAverage of a comparison folder."""
    if not average:
        if dataset is not None or weigh_unconverged:
            fail("--dataset and --weigh-unconverged apply with --average (RUN a comparison folder)")
        if (run / "fits").is_dir() and (run / "manifest.json").exists():
            fail(f"{run} is a comparison folder: add --average to predict from its weighted fits, or give one "
                 f"fit's folder ({run / 'fits'}/<fit>)")
        return load_result(run, model)
    if model is not None:
        fail("--model applies to one fit's folder, not with --average")
    from ..fit.run import RunError
    from ..predict.average import from_comparison

    try:
        averaged = from_comparison(run, dataset=dataset, weigh_unconverged=weigh_unconverged)
    except (ValueError, RunError) as exc:
        fail(exc)
    console.print(f"predicting from the {escape(averaged.label)}"
                  + "".join(f"\n  note: {escape(n)}" for n in averaged.notes), highlight=False)
    return averaged


def g(x, digits=4) -> str:
    if pd.isna(x):
        return "-"
    return f"{x:.1f}" if digits == 1 else f"{x:.{digits}g}"


def print_frame(frame: pd.DataFrame, title: str) -> None:
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col))
    for _, row in frame.iterrows():
        table.add_row(*[str(v) for v in row])
    console.print(table)


def print_parameter_table(table: pd.DataFrame, title: str) -> None:
    rich_table = Table(title=f"Population parameters ({title}): posterior median [95% interval]")
    for col in ("kind", "name", "unit", "median", "95% interval", "CV%", "shrinkage%", "R-hat", "ESS bulk", "ESS tail"):
        rich_table.add_column(col, justify="right" if col not in ("kind", "name", "unit") else "left")
    for _, r in table.iterrows():
        rich_table.add_row(r["kind"], r["name"], str(r["unit"]), g(r["median"]), f"{g(r['lower'])} - {g(r['upper'])}",
                           g(r.get("cv_percent", np.nan), 1), g(r.get("shrinkage_percent", np.nan), 1),
                           f"{r['r_hat']:.3f}", f"{r['ess_bulk']:.0f}", f"{r['ess_tail']:.0f}")
    console.print(rich_table)


def print_diagnostics(result) -> list[str]:
    lines = []
    for d in result.diagnostics():
        word = "ok" if d.ok else "WARN" if d.warning else "FAIL"
        style = "green" if d.ok else "yellow" if d.warning else "bold red"
        console.print(f"[{style}]{word:4}[/] " + escape(d.message), highlight=False)
        lines.append(f"{word:4} " + d.message)
    return lines


def times_option(text: str | None, option: str = "--times") -> np.ndarray | None:
    """'0,1,2,4,8' -> array; None when not given."""
    if text is None:
        return None
    try:
        values = np.array([float(t) for t in text.split(",") if t.strip()])
    except ValueError:
        fail(f"{option} {text!r} is not a comma-separated list of numbers (times in the time unit)")
    if values.size == 0 or not np.all(np.isfinite(values)):
        fail(f"{option} {text!r}: give finite times, e.g. 0,1,2,4,8,24")
    return np.unique(values)


def split_items(values: list[str] | None) -> list[str]:
    """Repeated or comma-separated option values, stripped."""
    return [v.strip() for item in (values or []) for v in item.split(",") if v.strip()]
