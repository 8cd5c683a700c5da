"""What follows a fit: `pkpd ppc`, `pkpd dose` and `pkpd report` (each takes a run folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rich.markup import escape

from .common import (AverageOpt, DatasetOpt, ModelOpt, RunArg, Table, WeighOpt, console, fail, load_fit_or_average,
                     load_result, split_items, times_option)

StratifyOpt = Annotated[str, typer.Option(help="VPC strata: auto (product when there are several), all, product, dose_group, dose_level, lymphodepletion or disease.")]


def ppc_command(run: RunArg,
                out: Annotated[Path, typer.Option("-o", "--out", help="Output folder for the figures and tables.")],
                replicates: Annotated[int, typer.Option(min=20, max=10_000, help="Simulated replicates of the cohort (VPC, PIT).")] = 200,
                draws: Annotated[int, typer.Option(min=1, max=10_000, help="Posterior draws for the IPRED bands.")] = 100,
                stratify: StratifyOpt = "auto",
                ci_prob: Annotated[float, typer.Option(min=0.01, max=0.99, help="Width of the IPRED bands.")] = 0.9,
                seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
                model: ModelOpt = None, average: AverageOpt = False, dataset: DatasetOpt = None,
                weigh_unconverged: WeighOpt = False) -> None:
    """Posterior-predictive checks: individual fits, goodness of fit (DV vs PRED/IPRED, NPD),
    VPC and pcVPC with the below-LLOQ panel (of one fit, or with --average of a comparison's
    stacking-weighted fits)."""
    from ..predict import posterior_predictive
    from ..predict.plots import write_ppc

    result = load_fit_or_average(run, model, average, dataset, weigh_unconverged)
    if out.exists() and not out.is_dir():
        fail(f"-o {out} exists and is not a folder")
    try:
        with console.status("simulating the posterior predictive"):
            ppc = posterior_predictive(result, replicates=replicates, draws=draws, seed=seed, ci_prob=ci_prob)
            files = write_ppc(ppc, out, stratify=stratify)
    except ValueError as exc:
        fail(exc)
    console.print(f"wrote {len(files)} files to {out}: " + ", ".join(f.name for f in files))


def dose_command(run: RunArg,
                 out: Annotated[Path, typer.Option("-o", "--out", help="Output folder: pta.csv, recommendation.json, figures.")],
                 doses: Annotated[Optional[list[str]], typer.Option("--doses", help="Candidate regimens, comma-separated or repeated: 1e8,3e8,6e8; 1e6/kg; '100 mg x6 q12h'; '3e8 split 10/30/60 q1d' (default: a log grid around the fitted doses).")] = None,
                 target: Annotated[Optional[list[str]], typer.Option("--target", help="Target NAME:ANALYTE:METRIC(>=|>|<=|<)VALUE:KIND (repeatable; replaces the defaults), e.g. aplasia:bcells:aplasia_duration>=90:efficacy or trough:conc:cmin_ss>=10:efficacy.")] = None,
                 efficacy_level: Annotated[float, typer.Option(min=0.001, max=0.999, help="Probability every efficacy target must reach.")] = 0.8,
                 safety_level: Annotated[float, typer.Option(min=0.001, max=0.999, help="Probability every safety target must keep.")] = 0.9,
                 draws: Annotated[int, typer.Option(min=10, max=10_000, help="Posterior draws (parameter uncertainty).")] = 100,
                 patients: Annotated[int, typer.Option(min=1, max=10_000, help="Virtual patients per draw, regimen and scenario.")] = 40,
                 times: Annotated[Optional[str], typer.Option("--times", help="Sampling times after the first dose, comma-separated, in the data's time unit (default: the fitted data's nominal schedule).")] = None,
                 seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
                 model: ModelOpt = None, average: AverageOpt = False, dataset: DatasetOpt = None,
                 weigh_unconverged: WeighOpt = False) -> None:
    """Dose selection: probability of target attainment of new virtual patients over candidate
    regimens, lymphodepletion and product, and the regimen with the lowest total dose meeting
    the levels (from one fit, or with --average from a comparison's stacking-weighted fits)."""
    from ..dose import DEFAULT_TARGETS, Target, select_dose, write_dose
    from ..simulate import SolverError

    result = load_fit_or_average(run, model, average, dataset, weigh_unconverged)
    if out.exists() and not out.is_dir():
        fail(f"-o {out} exists and is not a folder")
    grid = times_option(times)
    try:
        targets = [Target.parse(t) for t in target] if target else DEFAULT_TARGETS
        with console.status("simulating virtual patients"):
            selection = select_dose(result, split_items(doses) or None, targets=targets, draws=draws,
                                    patients=patients, efficacy_level=efficacy_level, safety_level=safety_level,
                                    times=grid, seed=seed)
    except (ValueError, SolverError) as exc:
        fail(exc)
    files = write_dose(selection, out, result.cohort)
    print_recommendation(selection.recommendation)
    console.print(f"wrote {', '.join(str(f) for f in files)}")


def print_recommendation(rec: dict) -> None:
    table = Table(title=f"Lowest total dose with P(efficacy) >= {rec['efficacy_level']} and P(safety) >= "
                        f"{rec['safety_level']}")
    for col in ("scenario", "regimen", "probabilities (90% interval)"):
        table.add_column(col)
    for scenario, entry in rec["scenarios"].items():
        probs = "; ".join(f"{k} {v['probability']:.2f} ({v['lower']:.2f}-{v['upper']:.2f})"
                          for k, v in entry.get("probabilities", {}).items())
        table.add_row(scenario, entry.get("recommended_dose") or "none", probs or entry.get("reason", ""))
    console.print(table)
    for item in rec.get("skipped_targets", []):
        console.print(f"[yellow]skipped target {escape(str(item['target']))}[/]: {escape(str(item['reason']))}", highlight=False)


def report_command(run: RunArg,
                   out: Annotated[Path, typer.Option("-o", "--out", help="The HTML file to write.")] = Path("report.html"),
                   dose: Annotated[Optional[Path], typer.Option(help="Folder written by `pkpd dose` (default: computed now with the default targets).")] = None,
                   compare: Annotated[Optional[Path], typer.Option(help="A comparison run folder, for the leaderboard section.")] = None,
                   trial: Annotated[Optional[Path], typer.Option(help="Folder written by `pkpd trial simulate`, for the trial section.")] = None,
                   stratify: StratifyOpt = "auto",
                   seed: Annotated[int, typer.Option(min=0, help="Random seed of what is computed now.")] = 0,
                   model: ModelOpt = None) -> None:
    """One self-contained HTML report: data, NCA, parameters, diagnostics, individual fits, GOF,
    VPCs, model comparison, dose selection, the escalation trial simulation and provenance."""
    from ..compare import leaderboard as rank
    from ..dose import read_dose
    from ..report import write_report
    from ..trial.output import read_trial

    result = load_result(run, model)
    if out.is_dir():
        fail(f"-o {out} is a folder; give the path of the HTML file to write")
    selection = leaderboard = simulation = None
    try:
        if dose is not None:
            selection = read_dose(dose)
        if trial is not None:
            simulation = read_trial(trial)
        if compare is not None:
            if not (compare / "fits").is_dir():
                fail(f"--compare {compare} is not a comparison run folder (no fits/)")
            leaderboard = rank(compare)
        with console.status("writing the report"):
            path = write_report(result, out, selection=selection, leaderboard=leaderboard, trial=simulation,
                                stratify=stratify, seed=seed)
    except ValueError as exc:
        fail(exc)
    console.print(f"wrote {path}")
