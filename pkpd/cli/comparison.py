"""`pkpd compare SPEC` and `pkpd compare show DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer

from rich.markup import escape
from rich.text import Text

from .common import Table, console, err_console, fail, g


def compare_command(
        target: Annotated[str, typer.Argument(help="Run specification (TOML), or 'show' to print a run's leaderboard.")],
        directory: Annotated[Optional[Path], typer.Argument(help="With 'show': the run folder.")] = None,
        out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Run folder (default: SPECNAME-run beside the spec).")] = None,
        scheduler: Annotated[Optional[str], typer.Option(help="Address of a running dask scheduler (default: a LocalCluster).")] = None,
        workers: Annotated[Optional[int], typer.Option(min=1, help="LocalCluster worker processes (default: one per core).")] = None,
        weigh_unconverged: Annotated[bool, typer.Option("--weigh-unconverged", help="Give fits that failed their diagnostics stacking weights too (default: converged fits only).")] = False) -> None:
    """Run every fit a spec names (resuming a killed run) and print the ranked leaderboard;
    `pkpd compare show DIR` prints a run's leaderboard again."""
    from rich.progress import Progress

    from ..compare import SpecError, compare, leaderboard, load_spec, write
    from ..compare.run import RunFolderError

    if target == "show":
        if directory is None or not (directory / "fits").is_dir():
            fail(f"{directory} is not a comparison run folder (no fits/)")
        table = leaderboard(directory, weigh_unconverged=weigh_unconverged)
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
            bar.console.print(f"[{colour}]{result['status']:6}[/] {escape(result['id'])} ({result.get('seconds') or 0:.0f} s)"
                              + (f" {escape(str(result['reason']))}" if result.get("reason") else ""), highlight=False)

        try:
            result = compare(spec, out, scheduler=scheduler, workers=workers, on_result=report,
                             weigh_unconverged=weigh_unconverged)
        except RunFolderError as exc:
            fail(exc)
    if result.search is not None:
        print_search(result.search)
    print_leaderboard(result.leaderboard)
    console.print(f"wrote {result.directory / 'leaderboard.csv'} and {result.directory / 'leaderboard.png'}"
                  + (" (and the search log search_log.csv, search.json)" if result.search is not None else ""))
    failed = [r["id"] for r in result.fits.values() if r.get("status") != "ok"]
    if failed:
        err_console.print(f"[bold red]{len(failed)} of {len(result.fits)} fit(s) failed[/]: {escape(', '.join(failed))} "
                          "(reasons in the table and in fits/*/fit.log)", highlight=False)
        raise typer.Exit(1)


def print_search(found) -> None:
    """The covariate search: every candidate evaluated, its ELPD difference in SEs, the decision."""
    table = Table(title="Covariate search: forward inclusion, backward elimination (subject-level ELPD)")
    for col in ("step", "direction", "relation", "d_elpd", "se", "z", "converged", "decision"):
        table.add_column(col, justify="right" if col in ("step", "d_elpd", "se", "z") else "left")
    for _, r in found.log.iterrows():
        table.add_row(str(r["step"]), str(r["direction"]), str(r["relation"]), g(r["d_elpd"], 3), g(r["se"], 3),
                      g(r["z"], 3), "yes" if r["converged"] else Text("NO", style="bold red"), str(r["decision"]))
    console.print(table)
    console.print(f"final relations: {escape(', '.join(found.relations) or 'none')} (fit {escape(found.fit_id)})",
                  highlight=False)


def print_leaderboard(table: pd.DataFrame) -> None:
    for dataset, group in table.groupby("dataset", sort=False):
        rich_table = Table(title=f"Leaderboard, dataset {dataset}: LOO with the subject as the unit (random effects integrated out)")
        for col in ("rank", "model", "variant", "elpd_loo", "se", "d_elpd", "d_se", "weight", "k>0.7", "method",
                    "elpd (records)", "converged", "time s", "note"):
            rich_table.add_column(col, justify="right" if col not in ("model", "variant", "note", "converged") else "left")
        for _, r in group.iterrows():
            conv = "yes" if r["converged"] else Text("NO", style="bold red")
            rich_table.add_row("-" if pd.isna(r["rank"]) else str(int(r["rank"])), str(r["model"]), str(r["variant"]),
                               g(r["elpd_loo"], 6), g(r["se"], 3), g(r["d_elpd"], 3), g(r["d_se"], 3),
                               g(r["weight"], 2), "-" if pd.isna(r["pareto_k_bad"]) else str(int(r["pareto_k_bad"])),
                               str(r.get("loo_method") or "-"),
                               g(r["elpd_loo_obs"], 6), conv, g(r["seconds"], 3),
                               str(r["reason"] or "") or ("" if r["converged"] else "diagnostics failed: see fits/*/diagnostics.json"))
        console.print(rich_table)
