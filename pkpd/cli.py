"""The `pkpd` command line: a thin mirror of the library (typer + rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .data import check_file, read_cohort, write_cohort
from .data.report import DataError, Report
from .nca import nca as run_nca
from .nca import summarize

app = typer.Typer(help="cart-pkpd: CAR-T cell PK/PD modelling.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Check and convert CAR-T datasets (NONMEM style or CDISC ADaM).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(width=None if Console().is_terminal else 160)
err_console = Console(stderr=True)

FormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", help="Input format: nonmem or adam (default: detected from the header).")]
MapOpt = Annotated[Optional[list[str]], typer.Option("--map", help="Column for a role, ROLE=COLUMN (repeatable), e.g. --map subject=PATID.")]
UnitOpt = Annotated[Optional[list[str]], typer.Option("--unit", help="Unit of an analyte, ANALYTE=UNIT (repeatable), e.g. --unit CRP=mg/L.")]
TimeUnitOpt = Annotated[str, typer.Option("--time-unit", help="Unit of the time columns when the file has none: d or h.")]
DoseUnitOpt = Annotated[str, typer.Option("--dose-unit", help="Unit of AMT when the file has none: cells or cells/kg.")]


def fail(message) -> NoReturn:
    """Print an error (no traceback) and exit with status 2: bad input or arguments."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise typer.BadParameter(f"{item!r} is not of the form {what}", param_hint="--map/--unit")
        out[key.strip()] = value.strip()
    return out


def _options(format, maps, units, time_unit, dose_unit) -> dict:
    return dict(format=format, mapping=_pairs(maps, "ROLE=COLUMN"), units=_pairs(units, "ANALYTE=UNIT"),
                time_unit=time_unit, dose_unit=dose_unit)


def print_report(report: Report, max_per_rule: int = 20) -> None:
    style = {"error": "bold red", "warning": "yellow", "note": "cyan"}
    order = {"error": 0, "warning": 1, "note": 2}
    counts: dict[str, int] = {}
    for f in sorted(report.findings, key=lambda f: (order[f.severity], f.line or 0)):
        counts[f.rule] = counts.get(f.rule, 0) + 1
        if counts[f.rule] > max_per_rule:
            continue
        console.print(f"[{style[f.severity]}]{f.severity.upper():7}[/] {f.location()}: {f.message}"
                      + (f" [dim]Fix: {f.fix}[/]" if f.fix else ""), highlight=False, soft_wrap=True)
    for rule, n in counts.items():
        if n > max_per_rule:
            console.print(f"        ... and {n - max_per_rule} more '{rule}' finding(s)")
    console.print(("[green]OK[/] " if report.ok else "[bold red]FAILED[/] ") + report.summary(),
                  highlight=False)


def _read(file: Path, options: dict):
    try:
        return read_cohort(file, **options)
    except DataError as exc:
        print_report(exc.report)
        raise typer.Exit(1)


@data_app.command("check")
def data_check(file: Annotated[Path, typer.Argument(help="NONMEM-style or ADaM CSV file.")],
               format: FormatOpt = None, map: MapOpt = None, unit: UnitOpt = None,
               time_unit: TimeUnitOpt = "d", dose_unit: DoseUnitOpt = "cells",
               max_per_rule: Annotated[int, typer.Option(help="Findings shown per rule.")] = 20) -> None:
    """Validate a dataset and print every problem with its line, column and a fix.

    Exit status 1 when there are errors, 0 otherwise (warnings and notes allowed)."""
    result = check_file(file, **_options(format, map, unit, time_unit, dose_unit))
    print_report(result.report, max_per_rule)
    if result.cohort is not None:
        c = result.cohort
        console.print(f"{result.format} file: {len(c.subjects)} subjects, {len(c.doses)} doses, "
                      f"{len(c.observations)} observations of {len(c.analytes)} analytes")
        _print_frame(c.summary(), "Analytes")
    raise typer.Exit(0 if result.report.ok else 1)


@data_app.command("convert")
def data_convert(file: Annotated[Path, typer.Argument(help="Input CSV file.")],
                 to: Annotated[str, typer.Option("--to", help="Output format: nonmem or adam.")],
                 out: Annotated[Path, typer.Option("-o", "--out", help="Output CSV file.")],
                 format: FormatOpt = None, map: MapOpt = None, unit: UnitOpt = None,
                 time_unit: TimeUnitOpt = "d", dose_unit: DoseUnitOpt = "cells") -> None:
    """Convert between NONMEM style and ADaM style (nothing is written if the input has errors)."""
    if to not in ("nonmem", "adam"):
        raise typer.BadParameter(f"{to!r}: use nonmem or adam", param_hint="--to")
    cohort = _read(file, _options(format, map, unit, time_unit, dose_unit))
    write_cohort(cohort, out, to)
    console.print(f"wrote {out} ({to}, {len(cohort.subjects)} subjects)")


@app.command("nca")
def nca_command(file: Annotated[Path, typer.Argument(help="NONMEM-style or ADaM CSV file.")],
                out: Annotated[Path, typer.Option("-o", "--out", help="Per-subject NCA table (CSV); the summary goes beside it as *_summary.csv.")],
                format: FormatOpt = None, map: MapOpt = None, unit: UnitOpt = None,
                time_unit: TimeUnitOpt = "d", dose_unit: DoseUnitOpt = "cells",
                aplasia_threshold: Annotated[float, typer.Option(help="B-cell aplasia threshold (cells/uL).")] = 5.0,
                by: Annotated[str, typer.Option(help="Comma-separated grouping columns for the summary.")] = "product,dose_level",
                all_metrics: Annotated[bool, typer.Option("--all", help="Print every metric, not only the headline ones.")] = False) -> None:
    """Non-compartmental analysis per subject and analyte, and a summary by dose group."""
    cohort = _read(file, _options(format, map, unit, time_unit, dose_unit))
    table, summary = _write_nca(cohort, out, aplasia_threshold, by.split(","))
    _print_summary(summary, all_metrics)
    console.print(f"wrote {out} ({len(table)} rows) and {_summary_path(out)}")


def _summary_path(out: Path) -> Path:
    return out.with_name(out.stem + "_summary.csv")


def _write_nca(cohort, out: Path, threshold: float, by) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ._files import atomic_path

    table = run_nca(cohort, aplasia_threshold=threshold)
    summary = summarize(table, by=by)
    for frame, path in ((table, out), (summary, _summary_path(out))):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    return table, summary


# Headline columns of the printed summary: (analyte, metric, statistic, label)
HEADLINE = [("transgene", "cmax", "geo", "transgene Cmax"), ("transgene", "tmax", "median", "Tmax, d"),
            ("transgene", "auc_0_28", "geo", "AUC0-28d"), ("transgene", "half_life", "median", "t1/2 terminal, d"),
            ("il6", "cmax", "geo", "IL-6 Cmax"), ("bcells", "aplasia_duration", "median", "aplasia, d"),
            ("igg", "nadir_fold_change", "geo", "IgG nadir/baseline")]


def _print_summary(summary: pd.DataFrame, all_metrics: bool) -> None:
    """Label-style table: one row per dose group; geometric mean (CV%) or median (range)."""
    if summary.empty:
        console.print("no NCA metrics could be computed")
        return
    group_cols = [c for c in summary.columns if c not in ("analyte", "metric", "unit", "n", "geo_mean",
                                                          "geo_cv_percent", "median", "min", "max")]
    wanted = HEADLINE if not all_metrics else [
        (a, m, "geo" if not m.startswith(("t", "aplasia")) else "median", f"{a} {m}")
        for a, m in summary[["analyte", "metric"]].drop_duplicates().itertuples(index=False)]
    wanted = [w for w in wanted if ((summary["analyte"] == w[0]) & (summary["metric"] == w[1])).any()]
    table = Table(title="NCA summary by dose group: geometric mean (CV%) or median \\[range]")
    for col in [*group_cols, "n"]:
        table.add_column(col)
    for analyte, metric, _, label in wanted:
        unit = summary.loc[(summary["analyte"] == analyte) & (summary["metric"] == metric), "unit"].iloc[0]
        table.add_column(label if unit in ("d", "ratio") or label.endswith(", d") else f"{label}, {unit}",
                         justify="right")
    for keys, group in summary.groupby(group_cols, sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        cells = []
        for analyte, metric, stat, _ in wanted:
            row = group[(group["analyte"] == analyte) & (group["metric"] == metric)]
            cells.append(_stat_cell(row.iloc[0], stat) if len(row) else "-")
        n = group.loc[group["analyte"] == group["analyte"].iloc[0], "n"].max()
        table.add_row(*[str(k) for k in keys], str(n), *cells)
    console.print(table)


def _stat_cell(row, stat: str) -> str:
    if stat == "geo" and not pd.isna(row["geo_mean"]):
        return f"{_g(row['geo_mean'], 3)} ({_g(row['geo_cv_percent'], 1)}%)"
    return f"{_g(row['median'], 3)} [{_g(row['min'], 3)}-{_g(row['max'], 3)}]"


def _g(x, digits=4) -> str:
    if pd.isna(x):
        return "-"
    return f"{x:.1f}" if digits == 1 else f"{x:.{digits}g}"


def _print_frame(frame: pd.DataFrame, title: str) -> None:
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col))
    for _, row in frame.iterrows():
        table.add_row(*[str(v) for v in row])
    console.print(table)


#: the demo's PK/PD fit: transgene, B cells, IL-6 and IgG jointly, variability on the five
#: parameters the example cohort informs best, 4 chains x (500 + 500) so that the whole chain
#: stays within 15 minutes on 2 cores (run `pkpd fit` with --draws 1000 --tune 1000 for a full fit);
#: target_accept 0.95: the kkills direction (omega_kkills about 1.1) gave 3-10 divergences in
#: 2,000 draws at 0.8 and 0-1 at 0.9; at 0.95 none, and more ESS per second (1,691 in 152 s of
#: sampling against 678 in 97 s at 0.9)
DEMO_MODEL = "antigen_driven+cytokines_qss+igg"
DEMO_ANALYTES = ("transgene", "bcells", "il6", "igg")
DEMO_IIV = ("rho", "b0", "kkills", "emax_il6", "igg0")
DEMO_SAMPLER = {"chains": 4, "tune": 500, "draws": 500, "seed": 20261122, "target_accept": 0.95}
DEMO_COMPARE_DRAWS = 500


@app.command("demo")
def demo(out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("demo-out"),
         skip_compare: Annotated[bool, typer.Option("--skip-compare", help="Leave out the model comparison.")] = False,
         skip_fit: Annotated[bool, typer.Option("--skip-fit", help="Only check the data and write the NCA tables (with --skip-compare).")] = False) -> None:
    """The main job on the example SLE cohort: check, NCA, a joint PK/PD population fit,
    model comparison, posterior-predictive checks, dose selection and the HTML report."""
    import time

    from ._files import write_text
    from .dose import select_dose, write_dose
    from .fit import fit
    from .fit.run import load_run, write_run
    from .predict import posterior_predictive
    from .predict.plots import write_ppc
    from .report import write_report
    from .resources import example_data

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    source = example_data("nonmem")
    console.rule("[bold]1. Check the example cohort")
    result = check_file(source)
    print_report(result.report)
    write_text(out / "check_report.txt", result.report.format(max_per_rule=10_000) + "\n")
    if result.cohort is None:
        raise typer.Exit(1)
    cohort = result.cohort
    _print_frame(cohort.summary(), f"{len(cohort.subjects)} subjects, {len(cohort.observations)} observations")
    console.rule("[bold]2. Non-compartmental analysis")
    table, summary = _write_nca(cohort, out / "nca.csv", 5.0, ["product", "dose_level"])
    _print_summary(summary, all_metrics=False)
    written = [out / "check_report.txt", out / "nca.csv", out / "nca_summary.csv"]
    if not skip_fit:
        console.rule(f"[bold]3. Population PK/PD fit: {DEMO_MODEL} on {', '.join(DEMO_ANALYTES)}")
        console.print(f"variability on {', '.join(DEMO_IIV)}; {DEMO_SAMPLER['chains']} chains x "
                      f"({DEMO_SAMPLER['tune']} warm-up + {DEMO_SAMPLER['draws']} draws)", highlight=False)
        fitted = fit(DEMO_MODEL, cohort.select_analytes(DEMO_ANALYTES), iiv=DEMO_IIV, **DEMO_SAMPLER)
        write_run(out / "fit", fitted, cohort.select_analytes(DEMO_ANALYTES))
        print_parameter_table(fitted.parameter_table(), DEMO_MODEL)
        for d in fitted.diagnostics():
            console.print(("[green]ok  [/] " if d.ok else "[bold red]FAIL[/] ") + d.message, highlight=False)
        run = load_run(out / "fit")
    compare_dir = None
    if not skip_compare:
        console.rule("[bold]4. Compare the cellular-kinetic models (Bayesian population fits, PSIS-LOO)")
        spec_path = _demo_spec(out, source)
        compare_command(str(spec_path), out=out / "compare", scheduler=None, workers=None, directory=None)
        compare_dir = out / "compare"
        written.append(compare_dir / "leaderboard.csv")
    if not skip_fit:
        console.rule("[bold]5. Posterior-predictive checks")
        with console.status("simulating replicates of the cohort"):
            write_ppc(posterior_predictive(run, seed=1), out / "ppc")
        console.print(f"wrote individual fits, goodness-of-fit plots, VPCs and pcVPCs to {out / 'ppc'}")
        console.rule("[bold]6. Dose selection")
        with console.status("simulating virtual patients at candidate doses"):
            selection = select_dose(run, seed=1)
            write_dose(selection, out / "dose", run.cohort)
        print_recommendation(selection.recommendation)
        console.rule("[bold]7. Report")
        report = write_report(run, out / "report.html", ppc_dir=out / "ppc", dose_dir=out / "dose",
                              compare_dir=compare_dir)
        written += [out / "fit" / "posterior.nc", out / "dose" / "pta.csv", out / "dose" / "recommendation.json"]
        console.print(f"\n[bold green]report[/]: {report.resolve()}")
    console.print(f"[green]done[/] in {time.perf_counter() - started:.0f} s: " + ", ".join(str(p) for p in written))


def _demo_spec(out: Path, data: Path) -> Path:
    """The packaged comparison spec, pointed at the packaged example data."""
    import re

    from ._files import write_text
    from .resources import demo_comparison_spec

    text = demo_comparison_spec().read_text()
    text = re.sub(r'(?m)^path = ".*"$', f'path = "{data.as_posix()}"', text)
    # the demo's time budget: 500 + 500 per chain (the packaged spec asks for 1000 + 1000)
    text = re.sub(r"(?m)^(draws|tune) = \d+$", lambda m: f"{m.group(1)} = {DEMO_COMPARE_DRAWS}", text)
    return write_text(out / "compare_ck_models.toml", text)


models_app = typer.Typer(help="The built-in CAR-T models (compose them with +).", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _load_model(name: str):
    from .models import ModelError, load

    try:
        return load(name)
    except ModelError as exc:
        fail(exc)


@models_app.command("list")
def models_list() -> None:
    """List the built-in model modules."""
    from .models import list_models

    table = Table(title="Built-in modules (compose as ck+pd+pd, e.g. antigen_driven+cytokines+immunoglobulins)")
    for col in ("name", "kind", "form", "analytes", "description"):
        table.add_column(col)
    for module in list_models():
        form = "closed form" + (" + ODE" if module.rhs else "") if module.closed_form else "ODE"
        table.add_row(module.name, module.kind, form, ", ".join(o.analyte for o in module.observations),
                      module.description)
    console.print(table)


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="Model name, a composition (a+b) or a model file.")]) -> None:
    """Parameters (units, typical values, bounds, priors, variability, sources), states and analytes."""
    model = _load_model(name)
    console.print(model.describe())
    table = Table(title=f"Parameters of {model.name}")
    for col in ("parameter", "unit", "typical", "bounds", "prior (log-normal)", "IIV (SD)", "description", "source"):
        table.add_column(col)
    for p in model.parameters:
        prior = p.prior_or_default
        table.add_row(p.name, p.unit, f"{p.typical:.4g}", "fixed" if p.fixed else f"{p.bounds[0]:.3g} - {p.bounds[1]:.3g}",
                      "-" if p.fixed else f"median {prior.median:.3g}, sd {prior.sigma:g}",
                      f"{p.iiv:g}" if p.iiv else "-", p.description, p.source)
    console.print(table)
    obs = Table(title="Observations")
    for col in ("analyte", "unit", "residual error", "sigma", "source"):
        obs.add_column(col)
    for o in model.observations.values():
        obs.add_row(o.analyte, o.unit, o.error, f"{o.sigma:g}", o.source)
    console.print(obs)
    console.print(f"states: {', '.join(model.states) or 'none (closed form)'}")
    for module in model.modules:
        for ref in module.references:
            console.print(f"reference ({module.name}): {ref}", highlight=False)


@app.command("simulate")
def simulate_command(
        model: Annotated[str, typer.Argument(help="Model name, composition (a+b) or model file.")],
        out: Annotated[Path, typer.Option("-o", "--out", help="Output CSV (NONMEM style).")],
        dose: Annotated[Optional[list[str]], typer.Option("--dose", help="Dose in cells (3e8) or cells/kg (1e6/kg); repeat for several levels.")] = None,
        n: Annotated[int, typer.Option("--n", help="Subjects per dose level.")] = 10,
        seed: Annotated[Optional[int], typer.Option(help="Random seed (reproducible results).")] = None,
        product: Annotated[str, typer.Option(help="CD19, CD19/BCMA or CD19/CD20.")] = "CD19",
        lymphodepletion: Annotated[bool, typer.Option("--lymphodepletion/--no-lymphodepletion", help="Flu/Cy before infusion.")] = True,
        weight: Annotated[float, typer.Option(help="Body weight (kg) for cells/kg doses.")] = 70.0,
        disease: Annotated[str, typer.Option(help="Disease label of the virtual subjects.")] = "SLE",
        typical: Annotated[bool, typer.Option("--typical", help="The typical subject's noise-free predictions on a fine grid.")] = False) -> None:
    """Simulate a virtual trial (or the typical curves) and write NONMEM-style rows."""
    from .data import write_nonmem
    from .simulate import simulate, simulate_typical

    m = _load_model(model)
    doses = dose or ["1e6/kg"]
    try:
        if typical:
            cohort = simulate_typical(m, doses, product=product, lymphodepletion=lymphodepletion, weight=weight)
        else:
            cohort = simulate(m, doses, n, seed=seed, product=product, lymphodepletion=lymphodepletion,
                              weight=weight, disease=disease)
    except ValueError as exc:
        fail(exc)
    write_nonmem(cohort, out)
    console.print(f"wrote {out}: {len(cohort.subjects)} subject(s), {len(cohort.observations)} observations "
                  f"of {', '.join(cohort.analytes)}")


@app.command("fit-individual")
def fit_individual_command(
        model: Annotated[str, typer.Argument(help="Model name, composition (a+b) or model file.")],
        data: Annotated[Path, typer.Argument(help="NONMEM-style or ADaM CSV file.")],
        out: Annotated[Path, typer.Option("-o", "--out", help="Output netCDF file of the estimates.")],
        estimate: Annotated[Optional[list[str]], typer.Option("--estimate", help="Parameter to estimate (repeatable; default: those with variability).")] = None,
        max_nfev: Annotated[int, typer.Option(help="Maximum number of objective evaluations per round (subjects not yet converged get up to 3 rounds).")] = 200,
        format: FormatOpt = None, map: MapOpt = None, unit: UnitOpt = None,
        time_unit: TimeUnitOpt = "d", dose_unit: DoseUnitOpt = "cells") -> None:
    """Fit each subject with lmfit (censoring-aware; all subjects in one call) and write the estimates."""
    from ._files import atomic_path
    from .fit import fit_individual

    m = _load_model(model)
    cohort = _read(data, _options(format, map, unit, time_unit, dose_unit))
    try:
        fit = fit_individual(m, cohort, estimate=estimate, max_nfev=max_nfev)
    except ValueError as exc:
        fail(exc)
    with atomic_path(out) as tmp:
        fit.to_netcdf(tmp, engine="h5netcdf")
    table = Table(title=f"Individual estimates ({m.name}): median and range over subjects")
    for col in ("parameter", "unit", "typical", "median", "range", "median RSE%"):
        table.add_column(col)
    for name in fit["parameter"].values:
        v = fit["estimate"].sel(parameter=name).values
        r = fit["rse_percent"].sel(parameter=name).values
        table.add_row(str(name), m.parameter(str(name)).unit, f"{m.parameter(str(name)).typical:.4g}",
                      _g(np.nanmedian(v)), f"{_g(np.nanmin(v))} - {_g(np.nanmax(v))}", _g(np.nanmedian(r), 1))
    console.print(table)
    failed = [(s, r) for s, r, ok in zip(fit["subject"].values, fit["reason"].values, fit["converged"].values) if not ok]
    for subject, reason in failed:
        console.print(f"[yellow]subject {subject}[/]: {reason}", highlight=False)
    console.print(f"{int(fit['converged'].sum())}/{fit.sizes['subject']} subjects converged; wrote {out}")


@app.command("fit")
def fit_command(
        model: Annotated[str, typer.Argument(help="Model name, composition (a+b) or model file.")],
        data: Annotated[Path, typer.Argument(help="NONMEM-style or ADaM CSV file.")],
        out: Annotated[Path, typer.Option("-o", "--out", help="Run folder: posterior.nc, parameters.csv, diagnostics.txt.")],
        chains: Annotated[int, typer.Option(help="Number of chains.")] = 4,
        draws: Annotated[int, typer.Option(help="Draws per chain after warm-up.")] = 1000,
        tune: Annotated[int, typer.Option(help="Warm-up draws per chain.")] = 1000,
        seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
        target_accept: Annotated[float, typer.Option(help="NUTS target acceptance rate; raise it (0.9, 0.95) when the diagnostics report divergences.")] = 0.8,
        covariate: Annotated[Optional[list[str]], typer.Option("--covariate", help="Covariate effect PARAMETER~COVARIATE[:power|exponential] (repeatable), e.g. rho~lymphodepletion.")] = None,
        iiv: Annotated[Optional[list[str]], typer.Option("--iiv", help="Parameter with inter-individual variability (repeatable; default: the model's).")] = None,
        analyte: Annotated[Optional[list[str]], typer.Option("--analyte", help="Fit only these analytes (repeatable; default: every analyte the model predicts).")] = None,
        correlated: Annotated[bool, typer.Option(help="Correlated random effects (LKJ prior).")] = False,
        censoring: Annotated[str, typer.Option(help="Below-LLOQ likelihood: M3 or M4.")] = "M3",
        strict: Annotated[bool, typer.Option("--strict", help="Exit with status 1 when a diagnostic fails.")] = False,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the sampler's progress.")] = True,
        format: FormatOpt = None, map: MapOpt = None, unit: UnitOpt = None,
        time_unit: TimeUnitOpt = "d", dose_unit: DoseUnitOpt = "cells") -> None:
    """Bayesian hierarchical population fit (NUTS via nutpie) with parameter table and diagnostics."""
    from ._files import write_text
    from .fit import fit
    from .fit.run import write_run

    m = _load_model(model)
    cohort = _read(data, _options(format, map, unit, time_unit, dose_unit))
    try:
        if analyte:
            cohort = cohort.select_analytes(analyte)
        result = fit(m, cohort, chains=chains, draws=draws, tune=tune, seed=seed, iiv=iiv,
                     covariates=covariate or (), correlated=correlated, censoring=censoring, progress=progress,
                     target_accept=target_accept)
    except ValueError as exc:
        fail(exc)
    write_run(out, result, cohort)
    table = result.parameter_table()
    diagnostics = result.diagnostics()
    print_parameter_table(table, m.name)
    lines = []
    for d in diagnostics:
        console.print(("[green]ok  [/] " if d.ok else "[bold red]FAIL[/] ") + d.message, highlight=False)
        lines.append(("ok   " if d.ok else "FAIL ") + d.message)
    attrs = result.tree.attrs
    summary = (f"{chains} chains x ({tune} warm-up + {draws} draws): compile {attrs['compile_seconds']:.0f} s, "
               f"sampling {attrs['sampling_seconds']:.0f} s, total {attrs['total_seconds']:.0f} s; "
               f"{result.steps_per_draw():.0f} leapfrog steps per draw")
    console.print(summary)
    write_text(out / "diagnostics.txt", "\n".join(lines + [summary]) + "\n")
    console.print(f"wrote {out / 'posterior.nc'}, {out / 'data.csv'}, {out / 'parameters.csv'}, "
                  f"{out / 'diagnostics.txt'}")
    if strict and not all(d.ok for d in diagnostics):
        raise typer.Exit(1)


@app.command("sbc")
def sbc_command(
        model: Annotated[str, typer.Argument(help="Model name, composition (a+b) or model file.")],
        out: Annotated[Path, typer.Option("-o", "--out", help="Output folder: ranks.csv, summary.csv, ranks.png.")] = Path("sbc-out"),
        replications: Annotated[int, typer.Option(help="Number of simulate-and-fit replications.")] = 100,
        subjects: Annotated[int, typer.Option(help="Subjects in each simulated trial.")] = 8,
        dose: Annotated[str, typer.Option(help="Dose of the simulated trial (3e8 or 1e6/kg).")] = "1e6/kg",
        chains: Annotated[int, typer.Option(help="Chains per fit.")] = 2,
        draws: Annotated[int, typer.Option(help="Draws per chain.")] = 200,
        tune: Annotated[int, typer.Option(help="Warm-up draws per chain.")] = 200,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0) -> None:
    """Simulation-based calibration: rank statistics, a uniformity test per population parameter
    and rank histograms."""
    from rich.progress import Progress

    from .fit.sbc import sbc

    m = _load_model(model)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("SBC replications", total=replications)
        try:
            result = sbc(m, replications=replications, subjects=subjects, dose=dose, chains=chains, draws=draws,
                         tune=tune, seed=seed, progress=lambda done, total: bar.update(task, completed=done))
        except ValueError as exc:
            fail(exc)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_csv(out / "ranks.csv") as tmp:
        result.ranks.to_csv(tmp, index=False)
    with atomic_csv(out / "summary.csv") as tmp:
        result.summary.to_csv(tmp, index=False)
    result.plot(out / "ranks.png")
    table = Table(title=f"SBC of {m.name}: {replications} replications, ranks among {result.n_draws} draws")
    for col in ("parameter", "chi-square", "p-value", "uniform?"):
        table.add_column(col)
    for _, r in result.summary.iterrows():
        table.add_row(r["parameter"], f"{r['chi2']:.1f}", f"{r['p_value']:.3f}",
                      "yes" if r["p_value"] > 0.01 else "[red]no[/]")
    console.print(table)
    console.print(f"wrote {out / 'ranks.csv'}, {out / 'summary.csv'}, {out / 'ranks.png'}")


RunArg = Annotated[Path, typer.Argument(help="Fit run folder (written by `pkpd fit -o RUN`, or a comparison's fits/<id>).")]


def _load_run(folder: Path):
    from .fit.run import RunError, load_run

    try:
        return load_run(folder)
    except RunError as exc:
        fail(exc)


@app.command("ppc")
def ppc_command(run: RunArg,
                out: Annotated[Path, typer.Option("-o", "--out", help="Output folder for the figures and tables.")],
                replicates: Annotated[int, typer.Option(help="Simulated replicates of the cohort (VPC, PIT).")] = 200,
                draws: Annotated[int, typer.Option(help="Posterior draws for the IPRED bands.")] = 100,
                stratify: Annotated[str, typer.Option(help="VPC strata: product, dose_group, dose_level, lymphodepletion or disease.")] = "product",
                seed: Annotated[int, typer.Option(help="Random seed.")] = 0) -> None:
    """Posterior-predictive checks: individual fits, goodness of fit (DV vs PRED/IPRED, NPD),
    VPC and pcVPC with the below-LLOQ panel."""
    from .predict import posterior_predictive
    from .predict.plots import write_ppc

    loaded = _load_run(run)
    if stratify not in ("product", "dose_group", "dose_level", "lymphodepletion", "disease"):
        fail(f"--stratify {stratify!r} is not one of product, dose_group, dose_level, lymphodepletion, disease")
    try:
        with console.status("simulating the posterior predictive"):
            ppc = posterior_predictive(loaded, replicates=replicates, draws=draws, seed=seed)
            files = write_ppc(ppc, out, stratify=stratify)
    except ValueError as exc:
        fail(exc)
    console.print(f"wrote {len(files)} files to {out}: " + ", ".join(f.name for f in files))


@app.command("dose")
def dose_command(run: RunArg,
                 out: Annotated[Path, typer.Option("-o", "--out", help="Output folder: pta.csv, recommendation.json, figures.")],
                 doses: Annotated[Optional[list[str]], typer.Option("--doses", help="Candidate doses, comma-separated or repeated: 1e8,3e8,6e8 or 1e6/kg (default: a log grid around the fitted doses).")] = None,
                 target: Annotated[Optional[list[str]], typer.Option("--target", help="Target NAME:ANALYTE:METRIC(>=|>|<=|<)VALUE:KIND (repeatable; replaces the defaults), e.g. aplasia:bcells:aplasia_duration>=90:efficacy.")] = None,
                 efficacy_level: Annotated[float, typer.Option(help="Probability every efficacy target must reach.")] = 0.8,
                 safety_level: Annotated[float, typer.Option(help="Probability every safety target must keep.")] = 0.9,
                 draws: Annotated[int, typer.Option(help="Posterior draws (parameter uncertainty).")] = 100,
                 patients: Annotated[int, typer.Option(help="Virtual patients per draw, dose and scenario.")] = 40,
                 seed: Annotated[int, typer.Option(help="Random seed.")] = 0) -> None:
    """Dose selection: probability of target attainment of new virtual patients over candidate
    doses, lymphodepletion and product, and the lowest dose meeting the levels."""
    from .dose import DEFAULT_TARGETS, Target, select_dose, write_dose

    loaded = _load_run(run)
    candidates = [d.strip() for item in (doses or []) for d in item.split(",") if d.strip()]
    try:
        targets = [Target.parse(t) for t in target] if target else DEFAULT_TARGETS
        with console.status("simulating virtual patients"):
            selection = select_dose(loaded, candidates or None, targets=targets, draws=draws, patients=patients,
                                    efficacy_level=efficacy_level, safety_level=safety_level, seed=seed)
    except ValueError as exc:
        fail(exc)
    write_dose(selection, out, loaded.cohort)
    print_recommendation(selection.recommendation)
    console.print(f"wrote {out / 'pta.csv'}, {out / 'recommendation.json'}, {out / 'pta.png'}, "
                  f"{out / 'exposure_response.png'}")


def print_recommendation(rec: dict) -> None:
    table = Table(title=f"Lowest dose with P(efficacy) >= {rec['efficacy_level']} and P(safety) >= {rec['safety_level']}")
    for col in ("scenario", "dose", "probabilities (90% interval)"):
        table.add_column(col)
    for scenario, entry in rec["scenarios"].items():
        probs = "; ".join(f"{k} {v['probability']:.2f} ({v['lower']:.2f}-{v['upper']:.2f})"
                          for k, v in entry.get("probabilities", {}).items())
        table.add_row(scenario, entry.get("recommended_dose") or "none", probs or entry.get("reason", ""))
    console.print(table)
    for item in rec.get("skipped_targets", []):
        console.print(f"[yellow]skipped target {item['target']}[/]: {item['reason']}", highlight=False)


@app.command("report")
def report_command(run: RunArg,
                   out: Annotated[Path, typer.Option("-o", "--out", help="The HTML file to write.")] = Path("report.html"),
                   ppc: Annotated[Optional[Path], typer.Option(help="Folder written by `pkpd ppc` (default: computed now).")] = None,
                   dose: Annotated[Optional[Path], typer.Option(help="Folder written by `pkpd dose` (default: computed now with default targets).")] = None,
                   compare: Annotated[Optional[Path], typer.Option(help="A comparison run folder, for the leaderboard section.")] = None,
                   seed: Annotated[int, typer.Option(help="Random seed of what is computed now.")] = 0) -> None:
    """One self-contained HTML report: data, NCA, parameters, diagnostics, individual fits, GOF,
    VPCs, model comparison, dose selection and provenance."""
    from .report import make_report

    loaded = _load_run(run)
    for name, folder in (("--ppc", ppc), ("--dose", dose), ("--compare", compare)):
        if folder is not None and not folder.is_dir():
            fail(f"{name} {folder} is not a folder")
    with console.status("writing the report"):
        path = make_report(loaded, out, ppc_dir=ppc, dose_dir=dose, compare_dir=compare, seed=seed)
    console.print(f"wrote {path}")


@app.command("compare")
def compare_command(
        target: Annotated[str, typer.Argument(help="Run specification (TOML), or 'show' to print a run's leaderboard.")],
        directory: Annotated[Optional[Path], typer.Argument(help="With 'show': the run folder.")] = None,
        out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Run folder (default: SPECNAME-run beside the spec).")] = None,
        scheduler: Annotated[Optional[str], typer.Option(help="Address of a running dask scheduler (default: a LocalCluster).")] = None,
        workers: Annotated[Optional[int], typer.Option(help="LocalCluster worker processes (default: one per core).")] = None) -> None:
    """Run every fit a spec names (resuming a killed run) and print the ranked leaderboard;
    `pkpd compare show DIR` prints a run's leaderboard again."""
    from rich.progress import Progress

    from .compare import SpecError, compare, leaderboard, load_spec, write

    if target == "show":
        if directory is None or not (directory / "fits").is_dir():
            fail(f"{directory} is not a comparison run folder (no fits/)")
        table = leaderboard(directory)
        write(table, directory)
        print_leaderboard(table)
        return
    try:
        spec = load_spec(target)
    except SpecError as exc:
        fail(exc)
    console.print(f"{len(spec.fits)} fit(s): " + ", ".join(f.id for f in spec.fits), highlight=False)
    with Progress(console=console) as bar:
        task = bar.add_task("fits", total=len(spec.fits))

        def report(result, done, total):
            bar.update(task, completed=len(spec.fits) - total + done)
            colour = "green" if result["status"] == "ok" else "red"
            bar.console.print(f"[{colour}]{result['status']:6}[/] {result['id']} ({result.get('seconds') or 0:.0f} s)"
                              + (f" {result['reason']}" if result.get("reason") else ""), highlight=False)

        result = compare(spec, out, scheduler=scheduler, workers=workers, on_result=report)
    print_leaderboard(result.leaderboard)
    console.print(f"wrote {result.directory / 'leaderboard.csv'} and {result.directory / 'leaderboard.png'}")


def print_leaderboard(table: pd.DataFrame) -> None:
    for dataset, group in table.groupby("dataset", sort=False):
        rich_table = Table(title=f"Leaderboard, dataset {dataset}: PSIS-LOO with the subject as the unit")
        for col in ("rank", "model", "variant", "elpd_loo", "se", "d_elpd", "d_se", "weight", "k>0.7",
                    "elpd (records)", "converged", "time s", "note"):
            rich_table.add_column(col, justify="right" if col not in ("model", "variant", "note", "converged") else "left")
        for _, r in group.iterrows():
            conv = "yes" if r["converged"] else "[bold red]NO[/]"
            rich_table.add_row("-" if pd.isna(r["rank"]) else str(int(r["rank"])), str(r["model"]), str(r["variant"]),
                               _g(r["elpd_loo"], 6), _g(r["se"], 3), _g(r["d_elpd"], 3), _g(r["d_se"], 3),
                               _g(r["weight"], 2), "-" if pd.isna(r["pareto_k_bad"]) else str(int(r["pareto_k_bad"])),
                               _g(r["elpd_loo_obs"], 6), conv, _g(r["seconds"], 3),
                               str(r["reason"] or "") or ("" if r["converged"] else "diagnostics failed: see fits/*/diagnostics.json"))
        console.print(rich_table)


def atomic_csv(path):
    from ._files import atomic_path

    return atomic_path(path)


def print_parameter_table(table: pd.DataFrame, title: str) -> None:
    rich_table = Table(title=f"Population parameters ({title}): posterior median [95% interval]")
    for col in ("kind", "name", "unit", "median", "95% interval", "CV%", "shrinkage%", "R-hat", "ESS bulk", "ESS tail"):
        rich_table.add_column(col, justify="right" if col not in ("kind", "name", "unit") else "left")
    for _, r in table.iterrows():
        rich_table.add_row(r["kind"], r["name"], str(r["unit"]), _g(r["median"]), f"{_g(r['lower'])} - {_g(r['upper'])}",
                           _g(r.get("cv_percent", np.nan), 1), _g(r.get("shrinkage_percent", np.nan), 1),
                           f"{r['r_hat']:.3f}", f"{r['ess_bulk']:.0f}", f"{r['ess_tail']:.0f}")
    console.print(rich_table)


def _version(value: bool):
    if value:
        console.print(f"cart-pkpd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """cart-pkpd: CAR-T cell PK/PD modelling."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
