"""`pkpd data check|convert` and `pkpd nca`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer

from ..data import check_file, write_cohort
from ..nca import nca as run_nca
from ..nca import summarize
from .common import (Table, CodeOpt, CommentOpt, DoseUnitOpt, FormatOpt, MapOpt, TimeUnitOpt, UnitOpt, console, fail, g,
                     print_frame, print_report, read, reading_options)

app = typer.Typer(help="Check and convert datasets (NONMEM style or CDISC ADaM).", no_args_is_help=True)


@app.command("check")
def data_check(file: Annotated[Path, typer.Argument(help="NONMEM-style or ADaM CSV file.")],
               format: FormatOpt = None, map: MapOpt = None, unit: UnitOpt = None, analyte_code: CodeOpt = None,
               time_unit: TimeUnitOpt = None, dose_unit: DoseUnitOpt = None, comment: CommentOpt = None,
               max_per_rule: Annotated[int, typer.Option(min=1, help="Findings shown per rule.")] = 20) -> None:
    """Validate a dataset and print every problem with its line, column and a fix.

    Exit status 1 when there are errors, 0 otherwise (warnings and notes allowed)."""
    result = check_file(file, **reading_options(format, map, unit, analyte_code, time_unit, dose_unit, comment))
    print_report(result.report, max_per_rule)
    if result.cohort is not None:
        c = result.cohort
        console.print(f"{result.format} file: {len(c.subjects)} subjects, {len(c.doses)} dose records, "
                      f"{len(c.observations)} observations of {len(c.analytes)} analytes; times in {c.time_unit}")
        print_frame(c.summary(), "Analytes")
    raise typer.Exit(0 if result.report.ok else 1)


@app.command("convert")
def data_convert(file: Annotated[Path, typer.Argument(help="Input CSV file.")],
                 to: Annotated[str, typer.Option("--to", help="Output format: nonmem or adam.")],
                 out: Annotated[Path, typer.Option("-o", "--out", help="Output CSV file.")],
                 format: FormatOpt = None, map: MapOpt = None, unit: UnitOpt = None, analyte_code: CodeOpt = None,
                 time_unit: TimeUnitOpt = None, dose_unit: DoseUnitOpt = None, comment: CommentOpt = None) -> None:
    """Convert between NONMEM style and ADaM style (nothing is written if the input has errors)."""
    if to not in ("nonmem", "adam"):
        fail(f"--to {to!r}: use nonmem or adam")
    if out.is_dir():
        fail(f"-o {out} is a folder; give the path of the CSV file to write")
    cohort = read(file, reading_options(format, map, unit, analyte_code, time_unit, dose_unit, comment))
    write_cohort(cohort, out, to)
    console.print(f"wrote {out} ({to}, {len(cohort.subjects)} subjects)")


def nca_command(file: Annotated[Path, typer.Argument(help="NONMEM-style or ADaM CSV file.")],
                out: Annotated[Path, typer.Option("-o", "--out", help="Per-subject NCA table (CSV); the summary goes beside it as *_summary.csv.")],
                format: FormatOpt = None, map: MapOpt = None, unit: UnitOpt = None, analyte_code: CodeOpt = None,
                time_unit: TimeUnitOpt = None, dose_unit: DoseUnitOpt = None, comment: CommentOpt = None,
                window: Annotated[Optional[list[str]], typer.Option("--window", help="Partial-AUC window (repeatable), e.g. 24h or 28d (default: 28d and 90d for CAR-T analytes, 24h for others).")] = None,
                aplasia_threshold: Annotated[float, typer.Option(min=0.0, max=1e6, help="B-cell aplasia threshold (cells/uL).")] = 5.0,
                by: Annotated[str, typer.Option(help="Comma-separated grouping columns for the summary.")] = "product,dose_level",
                all_metrics: Annotated[bool, typer.Option("--all", help="Print every metric, not only the headline ones.")] = False) -> None:
    """Non-compartmental analysis per subject and analyte, and a summary by dose group."""
    if out.is_dir():
        fail(f"-o {out} is a folder; give the path of the CSV file to write (e.g. {out / 'nca.csv'})")
    cohort = read(file, reading_options(format, map, unit, analyte_code, time_unit, dose_unit, comment))
    try:
        table, summary = write_nca(cohort, out, aplasia_threshold, by.split(","), window or None)
    except ValueError as exc:
        fail(exc)
    print_summary(summary, all_metrics)
    console.print(f"wrote {out} ({len(table)} rows) and {summary_path(out)}")


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + "_summary.csv")


def write_nca(cohort, out: Path, threshold: float, by, windows=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    from .._files import atomic_path

    table = run_nca(cohort, aplasia_threshold=threshold, windows=windows)
    summary = summarize(table, by=by)
    for frame, path in ((table, out), (summary, summary_path(out))):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    return table, summary


# Headline columns of the printed summary: (analyte, metric, statistic, label); other analytes
# get Cmax, Tmax and their partial AUCs
HEADLINE = [("transgene", "cmax", "geo", "transgene Cmax"), ("transgene", "tmax", "median", "Tmax"),
            ("transgene", "auc_0_28d", "geo", "AUC0-28d"), ("transgene", "half_life", "median", "t1/2 terminal"),
            ("il6", "cmax", "geo", "IL-6 Cmax"), ("bcells", "aplasia_duration", "median", "aplasia"),
            ("igg", "nadir_fold_change", "geo", "IgG nadir/baseline")]
_TIME_METRICS = ("tmax", "tlast", "half_life", "aplasia_duration", "aplasia_onset", "t_nadir", "t_first_blq_after_peak")


def print_summary(summary: pd.DataFrame, all_metrics: bool) -> None:
    """Label-style table: one row per dose group; geometric mean (CV%) or median (range)."""
    if summary.empty:
        console.print("no NCA metrics could be computed")
        return
    group_cols = [c for c in summary.columns if c not in ("analyte", "metric", "unit", "n", "geo_mean",
                                                          "geo_cv_percent", "median", "min", "max")]
    pairs = summary[["analyte", "metric"]].drop_duplicates().itertuples(index=False)
    if all_metrics:
        wanted = [(a, m, "median" if m in _TIME_METRICS else "geo", f"{a} {m}") for a, m in pairs]
    else:
        wanted = HEADLINE
    present = lambda w: ((summary["analyte"] == w[0]) & (summary["metric"] == w[1])).any()
    wanted = [w for w in wanted if present(w)]
    if not wanted:  # no CAR-T analyte: Cmax, Tmax and the partial AUCs of each analyte
        wanted = [(a, m, "median" if m == "tmax" else "geo", f"{a} {m}") for a, m in pairs
                  if m in ("cmax", "tmax") or m.startswith("auc_0_")]
    table = Table(title="NCA summary by dose group: geometric mean (CV%) or median \\[range]")
    for col in [*group_cols, "n"]:
        table.add_column(col)
    for analyte, metric, _, label in wanted:
        unit = summary.loc[(summary["analyte"] == analyte) & (summary["metric"] == metric), "unit"].iloc[0]
        table.add_column(f"{label}, {unit}" if unit != "ratio" else label, justify="right")
    groups = summary.groupby(group_cols, sort=True, dropna=False) if group_cols else [((), summary)]
    for keys, group in groups:
        keys = keys if isinstance(keys, tuple) else (keys,)
        cells = []
        for analyte, metric, stat, _ in wanted:
            row = group[(group["analyte"] == analyte) & (group["metric"] == metric)]
            cells.append(stat_cell(row.iloc[0], stat) if len(row) else "-")
        n = group.loc[group["analyte"] == group["analyte"].iloc[0], "n"].max()
        table.add_row(*[str(k) for k in keys], str(n), *cells)
    console.print(table)


def stat_cell(row, stat: str) -> str:
    if stat == "geo" and not pd.isna(row["geo_mean"]):
        return f"{g(row['geo_mean'], 3)} ({g(row['geo_cv_percent'], 1)}%)"
    return f"{g(row['median'], 3)} [{g(row['min'], 3)}-{g(row['max'], 3)}]"
