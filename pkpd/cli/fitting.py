"""`pkpd fit-individual`, `pkpd fit` and `pkpd sbc`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from rich.markup import escape

from .common import (Table, CodeOpt, CommentOpt, DoseUnitOpt, FormatOpt, MapOpt, TimeUnitOpt, UnitOpt, console, fail, g, load_model,
                     print_diagnostics, print_parameter_table, read, reading_options)


def fit_individual_command(
        model: Annotated[str, typer.Argument(help="Model name, composition (a+b) or model file.")],
        data: Annotated[Path, typer.Argument(help="NONMEM-style or ADaM CSV file.")],
        out: Annotated[Path, typer.Option("-o", "--out", help="Output netCDF file of the estimates.")],
        estimate: Annotated[Optional[list[str]], typer.Option("--estimate", help="Parameter to estimate (repeatable; default: those with variability).")] = None,
        max_nfev: Annotated[int, typer.Option(min=1, help="Maximum number of objective evaluations per round (subjects not yet converged get up to 3 rounds).")] = 200,
        starts: Annotated[int, typer.Option(min=1, help="Starting values per subject (further ones drawn from the priors): optima as good as the best but elsewhere are reported.")] = 3,
        format: FormatOpt = None, map: MapOpt = None, unit: UnitOpt = None, analyte_code: CodeOpt = None,
        time_unit: TimeUnitOpt = None, dose_unit: DoseUnitOpt = None, comment: CommentOpt = None) -> None:
    """Fit each subject with lmfit (censoring-aware; all subjects in one call; the ODE solver's
    accuracy checked against LSODA) and write the estimates."""
    from .._files import atomic_path
    from ..fit import fit_individual
    from ..models import ModelError
    from ..simulate import SolverError

    m = load_model(model)
    if out.is_dir():
        fail(f"-o {out} is a folder; give the path of the netCDF file to write (e.g. {out / 'fits.nc'})")
    cohort = read(data, reading_options(format, map, unit, analyte_code, time_unit, dose_unit, comment))
    try:
        fit = fit_individual(m, cohort, estimate=estimate, max_nfev=max_nfev, starts=starts)
    except (ValueError, ModelError, SolverError) as exc:
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
                      g(np.nanmedian(v)), f"{g(np.nanmin(v))} - {g(np.nanmax(v))}", g(np.nanmedian(r), 1))
    console.print(table)
    for subject, reason in zip(fit["subject"].values, fit["reason"].values):
        if reason:
            console.print(f"[yellow]subject {escape(str(subject))}[/]: {escape(str(reason))}", highlight=False)
    worst = float(np.nanmax(fit["solver_error"].values)) if np.isfinite(fit["solver_error"].values).any() else 0.0
    console.print(f"{int(fit['converged'].sum())}/{fit.sizes['subject']} subjects converged; largest solver "
                  f"error against LSODA {worst:.1e} (log scale); "
                  f"{int((fit['n_modes'] > 1).sum())} subject(s) with several equally good optima; wrote {out}")


def fit_command(
        model: Annotated[str, typer.Argument(help="Model name, composition (a+b) or model file.")],
        data: Annotated[Path, typer.Argument(help="NONMEM-style or ADaM CSV file.")],
        out: Annotated[Path, typer.Option("-o", "--out", help="Run folder: posterior.nc, data.csv, parameters.csv, diagnostics, the model's source.")],
        chains: Annotated[int, typer.Option(min=1, max=64, help="Number of chains.")] = 4,
        draws: Annotated[int, typer.Option(min=10, max=100_000, help="Draws per chain after warm-up.")] = 1000,
        tune: Annotated[int, typer.Option(min=10, max=100_000, help="Warm-up draws per chain.")] = 1000,
        seed: Annotated[Optional[int], typer.Option(min=0, max=2**32 - 1, help="Random seed.")] = None,
        target_accept: Annotated[float, typer.Option(min=0.5, max=0.999, help="NUTS target acceptance rate; raise it (0.9, 0.95) when the diagnostics report divergences.")] = 0.8,
        covariate: Annotated[Optional[list[str]], typer.Option("--covariate", help="Covariate effect PARAMETER~COVARIATE[:power|exponential] (repeatable), e.g. rho~lymphodepletion.")] = None,
        iiv: Annotated[Optional[list[str]], typer.Option("--iiv", help="Parameter with inter-individual variability (repeatable; default: the model's).")] = None,
        fixed_effect: Annotated[Optional[list[str]], typer.Option("--fixed-effect", help="Parameter estimated without variability (repeatable); the others without variability stay at their typical values.")] = None,
        prior: Annotated[Optional[list[str]], typer.Option("--prior", help="Prior NAME=LogNormal(MEDIAN,SD) for a typical value, sigma_ANALYTE or sigma_add_ANALYTE; omega_NAME=HalfNormal(SCALE) (repeatable).")] = None,
        priors: Annotated[Optional[Path], typer.Option("--priors", help="TOML file with a [priors] table of the same NAME = \"LogNormal(MEDIAN, SD)\".")] = None,
        analyte: Annotated[Optional[list[str]], typer.Option("--analyte", help="Fit only these analytes (repeatable; default: every analyte the model predicts).")] = None,
        correlated: Annotated[bool, typer.Option(help="Correlated random effects (LKJ prior).")] = False,
        censoring: Annotated[str, typer.Option(help="Below-LLOQ likelihood: M3 or M4.")] = "M3",
        strict: Annotated[bool, typer.Option("--strict", help="Exit with status 1 when a diagnostic fails.")] = False,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the sampler's progress.")] = True,
        format: FormatOpt = None, map: MapOpt = None, unit: UnitOpt = None, analyte_code: CodeOpt = None,
        time_unit: TimeUnitOpt = None, dose_unit: DoseUnitOpt = None, comment: CommentOpt = None) -> None:
    """Bayesian hierarchical population fit (NUTS via nutpie) with parameter table and diagnostics."""
    from .._files import write_text
    from ..fit import fit
    from ..fit.priors import load_priors, parse_assignment
    from ..models import ModelError
    from ..simulate import SolverError

    m = load_model(model)
    if out.exists() and not out.is_dir():
        fail(f"-o {out} exists and is not a folder; give a folder for the run")
    chosen = {}
    try:
        if priors is not None:
            chosen.update(load_priors(priors))
        chosen.update(dict(parse_assignment(p) for p in prior or []))
    except ValueError as exc:
        fail(exc)
    cohort = read(data, reading_options(format, map, unit, analyte_code, time_unit, dose_unit, comment))
    try:
        if analyte:
            cohort = cohort.select_analytes(analyte)
        result = fit(m, cohort, chains=chains, draws=draws, tune=tune, seed=seed, iiv=iiv, fixed_effects=fixed_effect,
                     covariates=covariate or (), priors=chosen, correlated=correlated, censoring=censoring,
                     progress=progress, target_accept=target_accept)
    except (ValueError, ModelError, SolverError) as exc:
        fail(exc)
    result.save(out)
    print_parameter_table(result.parameter_table(), m.name)
    held = [p.name for p in m.parameters if not p.fixed and p.name not in result.spec.estimated]
    if held:
        console.print(f"held at their typical values (not estimated): {', '.join(held)}; estimate one with "
                      "--fixed-effect NAME or --iiv NAME", highlight=False)
    lines = print_diagnostics(result)
    attrs = result.tree.attrs
    summary = (f"{chains} chains x ({tune} warm-up + {draws} draws): compile {attrs['compile_seconds']:.0f} s "
               f"({attrs.get('compiled', 'compiled')}), sampling {attrs['sampling_seconds']:.0f} s, "
               f"total {attrs['total_seconds']:.0f} s; {result.steps_per_draw():.0f} leapfrog steps per draw")
    console.print(summary)
    write_text(out / "diagnostics.txt", "\n".join(lines + [summary]) + "\n")
    console.print(f"wrote the run folder {out} (posterior.nc, data.csv, parameters.csv, diagnostics, model/)")
    if strict and not result.converged:
        raise typer.Exit(1)


def sbc_command(
        model: Annotated[str, typer.Argument(help="Model name, composition (a+b) or model file.")],
        out: Annotated[Path, typer.Option("-o", "--out", help="Output folder: ranks.csv, summary.csv, ranks.png.")] = Path("sbc-out"),
        replicates: Annotated[int, typer.Option(min=2, max=10_000, help="Number of simulate-and-fit replicates.")] = 100,
        subjects: Annotated[int, typer.Option(min=1, max=10_000, help="Subjects in each simulated trial.")] = 8,
        dose: Annotated[str, typer.Option(help="Regimen of the simulated trial (3e8, 1e6/kg, '100 mg x3 q12h').")] = "1e6/kg",
        chains: Annotated[int, typer.Option(min=1, max=64, help="Chains per fit.")] = 2,
        draws: Annotated[int, typer.Option(min=10, max=100_000, help="Draws per chain.")] = 200,
        tune: Annotated[int, typer.Option(min=10, max=100_000, help="Warm-up draws per chain.")] = 200,
        seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
        replicate_seconds: Annotated[float | None, typer.Option(
            min=1, help="Stop a replicate's sampling after this many seconds (counted and reported).")] = None) -> None:
    """Simulation-based calibration: rank statistics, a uniformity test per population parameter
    and rank histograms. Replicates are written to OUT/replicates.csv as they finish; running the
    same command again resumes from it."""
    from rich.progress import Progress

    from .._files import atomic_path
    from ..fit.sbc import sbc

    m = load_model(model)
    if out.exists() and not out.is_dir():
        fail(f"-o {out} exists and is not a folder")
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("SBC replicates", total=replicates)
        try:
            result = sbc(m, replicates=replicates, subjects=subjects, dose=dose, chains=chains, draws=draws,
                         tune=tune, seed=seed, checkpoint=out / "replicates.csv", replicate_seconds=replicate_seconds,
                         progress=lambda done, total: bar.update(task, completed=done))
        except ValueError as exc:
            fail(exc)
    with atomic_path(out / "ranks.csv") as tmp:
        result.ranks.to_csv(tmp)
    with atomic_path(out / "summary.csv") as tmp:
        result.summary.to_csv(tmp, index=False)
    result.plot(out / "ranks.png")
    stopped = f" ({len(result.timed_out)} more stopped at the time cap)" if result.timed_out else ""
    table = Table(title=f"SBC of {m.name}: {len(result.ranks)} replicates{stopped}, ranks among {result.n_draws} draws")
    for col in ("parameter", "chi-square", "p-value", "uniform?"):
        table.add_column(col)
    for _, r in result.summary.iterrows():
        table.add_row(r["parameter"], f"{r['chi2']:.1f}", f"{r['p_value']:.3f}",
                      "yes" if r["p_value"] > 0.01 else "[red]no[/]")
    console.print(table)
    console.print(f"wrote {out / 'ranks.csv'}, {out / 'summary.csv'}, {out / 'ranks.png'}")
