"""`pkpd demo`: the main job on the example cohort, handing objects from step to step."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer

from .after_fit import print_recommendation
from .common import console, print_diagnostics, print_frame, print_parameter_table, print_report
from .comparison import print_leaderboard
from .data import print_summary, write_nca
from .trial import print_simulation

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
#: the escalation the demo simulates: the CD19/CD20 trial in SLE (3.0e8, 4.5e8, 6.0e8 CAR+ T cells,
#: BOIN with a target toxicity of 30%, about 12 patients in escalation, an expansion of 9)
DEMO_TRIAL = {"product": "CD19/CD20", "doses": ("3e8", "4.5e8", "6e8"), "target": 0.3, "max_n": 12, "expansion": 9,
              "trials": 1000}


def demo(out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("demo-out"),
         skip_compare: Annotated[bool, typer.Option("--skip-compare", help="Leave out the model comparison.")] = False,
         skip_fit: Annotated[bool, typer.Option("--skip-fit", help="Only check the data and write the NCA tables (with --skip-compare).")] = False) -> None:
    """The main job on the example SLE cohort: check, NCA, a joint PK/PD population fit,
    model comparison, posterior-predictive checks, dose selection, the dose-escalation trial
    simulated on the fit, and the HTML report."""
    from .._files import write_text
    from ..compare import compare
    from ..data import check_file
    from ..dose import select_dose, write_dose
    from ..fit import fit
    from ..predict import posterior_predictive
    from ..predict.plots import write_ppc
    from ..report import write_report
    from ..resources import example_data
    from ..trial.output import write_trial

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
    print_frame(cohort.summary(), f"{len(cohort.subjects)} subjects, {len(cohort.observations)} observations")
    console.rule("[bold]2. Non-compartmental analysis")
    _, summary = write_nca(cohort, out / "nca.csv", 5.0, ["product", "dose_level"])
    print_summary(summary, all_metrics=False)
    written = [out / "check_report.txt", out / "nca.csv", out / "nca_summary.csv"]
    fitted = None
    if not skip_fit:
        console.rule(f"[bold]3. Population PK/PD fit: {DEMO_MODEL} on {', '.join(DEMO_ANALYTES)}")
        console.print(f"variability on {', '.join(DEMO_IIV)}; {DEMO_SAMPLER['chains']} chains x "
                      f"({DEMO_SAMPLER['tune']} warm-up + {DEMO_SAMPLER['draws']} draws)", highlight=False)
        fitted = fit(DEMO_MODEL, cohort.select_analytes(DEMO_ANALYTES), iiv=DEMO_IIV, **DEMO_SAMPLER)
        fitted.save(out / "fit")  # to reopen later (pkpd ppc/dose/report out/fit); the steps below use the object
        print_parameter_table(fitted.parameter_table(), DEMO_MODEL)
        print_diagnostics(fitted)
    leaderboard = None
    if not skip_compare:
        console.rule("[bold]4. Compare the cellular-kinetic models (Bayesian population fits, subject-level LOO)")
        spec_path = _demo_spec(out, source)
        with console.status("fitting the candidate models"):
            comparison = compare(str(spec_path), out / "compare")
        leaderboard = comparison.leaderboard
        print_leaderboard(leaderboard)
        written.append(out / "compare" / "leaderboard.csv")
    if fitted is not None:
        console.rule("[bold]5. Posterior-predictive checks")
        with console.status("simulating replicates of the cohort"):
            ppc = posterior_predictive(fitted, seed=1)
            write_ppc(ppc, out / "ppc")
        console.print(f"wrote individual fits, goodness-of-fit plots, VPCs and pcVPCs to {out / 'ppc'}")
        console.rule("[bold]6. Dose selection")
        with console.status("simulating virtual patients at candidate doses"):
            selection = select_dose(fitted, seed=1)
            write_dose(selection, out / "dose", fitted.cohort)
        print_recommendation(selection.recommendation)
        console.rule(f"[bold]7. Dose-escalation trial: {DEMO_TRIAL['product']} at {', '.join(DEMO_TRIAL['doses'])}, "
                     f"BOIN with a target toxicity of {DEMO_TRIAL['target']:g}")
        with console.status("simulating the escalation trial on virtual patients"):
            trial = _demo_trial(fitted)
            write_trial(trial, out / "trial")
        print_simulation(trial)
        console.rule("[bold]8. Report")
        report = write_report(fitted, out / "report.html", ppc=ppc, selection=selection, leaderboard=leaderboard,
                              trial=trial)
        written += [out / "fit" / "posterior.nc", out / "dose" / "pta.csv", out / "dose" / "recommendation.json",
                    out / "trial" / "oc.csv"]
        console.print(f"\n[bold green]report[/]: {report.resolve()}")
    console.print(f"[green]done[/] in {time.perf_counter() - started:.0f} s: " + ", ".join(str(p) for p in written))


def _demo_trial(fitted):
    """The escalation of DEMO_TRIAL with and without lymphodepletion, on the fit's virtual patients."""
    from ..dose import Scenario
    from ..trial import BOIN, simulate_trials

    design = BOIN(target=DEMO_TRIAL["target"], max_n=DEMO_TRIAL["max_n"])
    scenarios = [Scenario(DEMO_TRIAL["product"], True), Scenario(DEMO_TRIAL["product"], False)]
    return simulate_trials(fitted, design, list(DEMO_TRIAL["doses"]), scenarios=scenarios, trials=DEMO_TRIAL["trials"],
                           expansion=DEMO_TRIAL["expansion"], seed=1)


def _demo_spec(out: Path, data: Path) -> Path:
    """The packaged comparison spec, pointed at the packaged example data (its sampler settings
    as packaged: every fit converges at them)."""
    from .._files import write_text
    from ..resources import demo_comparison_spec

    text = demo_comparison_spec().read_text()
    text = re.sub(r'(?m)^path = ".*"$', f'path = "{data.as_posix()}"', text)
    return write_text(out / "compare_ck_models.toml", text)
