"""`pkpd trial design`, `pkpd trial oc` and `pkpd trial simulate`: escalation designs, their
operating characteristics on fixed DLT probabilities, and the trial simulated on a fit."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from .._files import write_text
from .common import (AverageOpt, DatasetOpt, ModelOpt, RunArg, Table, WeighOpt, console, fail, g, load_fit_or_average,
                     read, split_items)

app = typer.Typer(help="Dose-escalation designs: decision tables and operating characteristics.",
                  no_args_is_help=True)

DESIGN_NAMES = "3+3, boin, mtpi2, crm or tite-crm"


def _design(name: str, target: float, cohort_size: int, max_n: int, ewoc: Optional[float]):
    from ..trial import DESIGNS

    key = name.strip().lower()
    if key not in DESIGNS:
        fail(f"--design {name!r} is not a design: use {DESIGN_NAMES}")
    if ewoc is not None and key not in ("crm", "tite-crm"):
        fail("--ewoc applies to --design crm or tite-crm only")
    if key == "3+3":
        return DESIGNS[key]()
    options = dict(target=target, cohort_size=1 if key == "tite-crm" else cohort_size, max_n=max_n)
    if key in ("crm", "tite-crm"):
        options["ewoc"] = ewoc
    try:
        return DESIGNS[key](**options)
    except ValueError as exc:
        fail(exc)


@app.command("design")
def design_command(
        name: Annotated[str, typer.Argument(help="boin or mtpi2 (designs with a decision table).")],
        target: Annotated[float, typer.Option(help="Target DLT probability at the MTD.")] = 0.3,
        cohort_size: Annotated[int, typer.Option(help="Patients per cohort.")] = 3,
        max_n: Annotated[int, typer.Option(help="Rows of the table: patients treated at a dose.")] = 12,
        out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Also write the table (CSV).")] = None) -> None:
    """Print a design's decision table: for each number of patients treated at the current dose,
    how many DLTs escalate, de-escalate, or eliminate the dose."""
    key = name.strip().lower()
    if key not in ("boin", "mtpi2"):
        fail(f"{name!r} has no decision table: use boin or mtpi2 (3+3 and CRM decide otherwise)")
    design = _design(key, target, cohort_size, max_n, None)
    table = design.decision_table()
    rich = Table(title=f"{design.name} decision table, target {design.target:g}")
    if key == "boin":
        lambda_e, lambda_d = design.boundaries
        rich.caption = (f"escalate if DLT rate <= lambda_e = {lambda_e:.3f}, de-escalate if >= lambda_d = "
                        f"{lambda_d:.3f}; eliminate if P(p > {design.target:g} | data) > {design.cutoff_eliminate}")
        rich.add_column("patients treated at the dose")
        for n in table["n"]:
            rich.add_column(str(n), justify="right")
        for column, label in (("escalate_if_le", "escalate if DLTs <="), ("deescalate_if_ge", "de-escalate if DLTs >="),
                              ("eliminate_if_ge", "eliminate if DLTs >=")):
            rich.add_row(label, *["-" if v is None or str(v) == "<NA>" else str(v) for v in table[column]])
    else:
        wide = table.pivot(index="dlt", columns="n", values="decision")
        rich.caption = "E escalate, S stay, D de-escalate, DU de-escalate and eliminate the dose and those above"
        rich.add_column("DLTs \\ patients")
        for n in wide.columns:
            rich.add_column(str(n), justify="right")
        for y, row in wide.iterrows():
            rich.add_row(str(y), *["" if not isinstance(v, str) else v for v in row])
    console.print(rich)
    if out is not None:
        write_text(out, table.to_csv(index=False))
        console.print(f"wrote {out}")


@app.command("oc")
def oc_command(
        design: Annotated[str, typer.Option(help=f"The design: {DESIGN_NAMES}.")],
        tox: Annotated[str, typer.Option(help="True DLT probability of each dose, increasing, e.g. 0.05,0.15,0.3.")],
        trials: Annotated[int, typer.Option(min=2, help="Simulated trials.")] = 2000,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 1,
        target: Annotated[float, typer.Option(help="Target DLT probability (not used by 3+3).")] = 0.3,
        cohort_size: Annotated[int, typer.Option(help="Patients per cohort (3+3: always 3; tite-crm: 1).")] = 3,
        max_n: Annotated[int, typer.Option(help="Patients per trial (3+3 stops by its own rules).")] = 30,
        window: Annotated[float, typer.Option(min=1, help="tite-crm: the DLT window (days), a DLT at a uniform time within it.")] = 28.0,
        accrual: Annotated[float, typer.Option(min=0.01, help="tite-crm: patients enrolled per month.")] = 2.0,
        ewoc: Annotated[Optional[float], typer.Option(help="CRM and TITE-CRM: overdose control, the largest P(DLT probability > target) allowed.")] = None,
        out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Folder for oc.csv and oc.json.")] = None) -> None:
    """Run a design many times on fixed true DLT probabilities (no model) and print how often each
    dose is selected, the patients and DLTs per dose, and the mean sample size (with Monte Carlo SEs)."""
    from ..trial import operating_characteristics

    try:
        probabilities = [float(v) for v in tox.split(",") if v.strip()]
    except ValueError:
        fail(f"--tox {tox!r} is not a comma-separated list of probabilities, e.g. 0.05,0.15,0.3")
    chosen = _design(design, target, cohort_size, max_n, ewoc)
    try:
        oc = operating_characteristics(chosen, probabilities, trials=trials, seed=seed, window=window,
                                       accrual_per_month=accrual)
    except ValueError as exc:
        fail(f"--tox: {exc}")
    rich = Table(title=f"Operating characteristics: {oc.design}, {oc.trials} trials, seed {seed}")
    for col in ("dose level", "true P(DLT)", "P(selected)", "SE", "patients", "SE ", "DLTs", "SE  "):
        rich.add_column(col, justify="left" if col == "dose level" else "right")
    for _, r in oc.table.iterrows():
        rich.add_row(r["dose_level"], g(r["true_tox"], 3), f"{r['p_select']:.3f}", f"{r['se_select']:.3f}",
                     g(r["mean_n"], 3), g(r["se_n"], 2), g(r["mean_dlt"], 3), g(r["se_dlt"], 2))
    console.print(rich)
    console.print(oc.describe(), highlight=False)
    if out is not None:
        write_text(out / "oc.csv", oc.table.to_csv(index=False))
        write_text(out / "oc.json", json.dumps({"design": oc.design, "settings": repr(chosen), "tox": list(oc.tox),
                                                "trials": oc.trials, "seed": seed, "mean_n": oc.mean_n,
                                                "se_mean_n": oc.se_mean_n, "p_stop_early": oc.p_stop_early}, indent=2))
        console.print(f"wrote {out / 'oc.csv'} and {out / 'oc.json'}")


@app.command("simulate")
def simulate_command(
        run: RunArg,
        out: Annotated[Path, typer.Option("-o", "--out", help="Output folder: oc.csv, summary.csv, trial.json, trial.png.")],
        design: Annotated[str, typer.Option(help=f"The design: {DESIGN_NAMES}.")] = "boin",
        doses: Annotated[Optional[list[str]], typer.Option("--doses", help="Dose levels, lowest first, comma-separated or repeated: 3e8,4.5e8,6e8 (regimens as in pkpd dose).")] = None,
        target: Annotated[float, typer.Option(help="Target DLT probability at the MTD (not used by 3+3).")] = 0.3,
        cohort_size: Annotated[int, typer.Option(help="Patients per cohort (3+3: always 3).")] = 3,
        max_n: Annotated[int, typer.Option(help="Patients in escalation (3+3 stops by its own rules).")] = 12,
        ewoc: Annotated[Optional[float], typer.Option(help="CRM and TITE-CRM: overdose control.")] = None,
        expansion: Annotated[int, typer.Option(min=0, help="Patients in the expansion cohort at the selected dose.")] = 9,
        window: Annotated[float, typer.Option(min=1, help="DLT window (days).")] = 28.0,
        stagger: Annotated[float, typer.Option(min=0, help="Days the first patient of a new dose is observed before the others.")] = 14.0,
        accrual: Annotated[float, typer.Option(min=0.01, help="Patients enrolled per month.")] = 2.0,
        signal: Annotated[str, typer.Option(help="The exposure the toxicity model reads, ANALYTE:METRIC (default il6:cmax).")] = "il6:cmax",
        reference: Annotated[Optional[float], typer.Option(help="Signal value at which the CRS priors apply (default 30, pg/mL of peak IL-6).")] = None,
        tox_prior: Annotated[Optional[list[str]], typer.Option("--tox-prior", help="Replace a toxicity prior (repeatable): gradeG=Normal(MEAN,SD) for logit P(grade >= G) at the reference, slope=Normal(MEAN,SD) per log10 unit, background=Beta(A,B), onset=Uniform(FIRST,LAST) days.")] = None,
        trials: Annotated[int, typer.Option(min=2, help="Simulated trials per scenario.")] = 1000,
        draws: Annotated[int, typer.Option(min=10, max=10_000, help="Posterior draws in the virtual-patient pool.")] = 100,
        product: Annotated[Optional[str], typer.Option(help="Only this product's scenarios (e.g. CD19/CD20).")] = None,
        seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 1,
        scheduler: Annotated[Optional[str], typer.Option(help="Address of a running dask scheduler: the trials' decisions run there in chunks.")] = None,
        adverse_events: Annotated[Optional[Path], typer.Option("--adverse-events", help="A data file (NONMEM or ADaM) with graded CRS records (DVID 13 / PARAMCD CRSGR) and the signal's samples, to fit the toxicity model to (default: the run's own data, when it has them).")] = None,
        model: ModelOpt = None, average: AverageOpt = False, dataset: DatasetOpt = None,
        weigh_unconverged: WeighOpt = False) -> None:
    """Simulate the dose-escalation trial on virtual patients from a fit: DLTs from the toxicity
    model (CRS grade from the predicted peak IL-6; fitted to graded CRS records when the data have
    them, priors otherwise), decisions by the design,
    then an expansion cohort; prints and writes the selection probabilities, patients, DLTs and
    duration per scenario (product x lymphodepletion)."""
    from ..dose import scenarios_for
    from ..predict.average import ModelAverage
    from ..simulate import SolverError
    from ..trial import ToxicityModel, simulate_trials
    from ..trial.output import write_trial

    result = load_fit_or_average(run, model, average, dataset, weigh_unconverged)
    if out.exists() and not out.is_dir():
        fail(f"-o {out} exists and is not a folder")
    chosen = _design(design, target, cohort_size, max_n, ewoc)
    analyte, sep, metric = signal.partition(":")
    if not sep or not analyte.strip() or not metric.strip():
        fail(f"--signal {signal!r} is not ANALYTE:METRIC, e.g. il6:cmax")
    scenarios = None
    if product is not None:
        average_of = ModelAverage.of(result)
        scenarios = [s for m in average_of.members for s in scenarios_for(m) if s.product == product]
        if not scenarios:
            known = sorted({str(s.product) for m in average_of.members for s in scenarios_for(m)})
            fail(f"--product {product!r} is not a scenario of this fit: one of {', '.join(known)}")
        scenarios = list(dict.fromkeys(scenarios))
    events = read(adverse_events, {}) if adverse_events is not None else None
    client = None
    if scheduler is not None:
        from distributed import Client

        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            fail(f"--scheduler {scheduler}: cannot connect ({exc}); start one with `dask scheduler` and `dask worker`")
    try:
        toxicity = ToxicityModel(analyte=analyte.strip(), metric=metric.strip(),
                                 **({"reference": reference} if reference is not None else {}),
                                 **toxicity_priors(tox_prior or []))
        with console.status("simulating trials"):
            simulation = simulate_trials(result, chosen, split_items(doses) or ["3e8", "4.5e8", "6e8"],
                                         toxicity=toxicity, scenarios=scenarios, trials=trials, seed=seed,
                                         window=window, stagger=stagger, accrual_per_month=accrual,
                                         expansion=expansion, draws=draws, client=client, events=events)
    except (ValueError, SolverError) as exc:
        fail(exc)
    finally:
        if client is not None:
            client.close()
    files = write_trial(simulation, out)
    print_simulation(simulation)
    console.print(f"wrote {', '.join(str(f) for f in files)}")


def print_simulation(simulation) -> None:
    for scenario, rows in simulation.oc.groupby("scenario", sort=False):
        rich = Table(title=f"{rows['design'].iloc[0]} on virtual patients: {scenario}")
        for col in ("dose", "P(selected)", "SE", "patients", "DLTs", "model P(DLT) (90%)"):
            rich.add_column(col, justify="left" if col == "dose" else "right")
        for _, r in rows.iterrows():
            model = "-" if r["dose"] == "none" else f"{r['p_dlt_model']:.3f} ({r['p_dlt_lower']:.3f}-{r['p_dlt_upper']:.3f})"
            rich.add_row(str(r["dose"]), f"{r['p_select']:.3f}", f"{r['se_select']:.3f}", g(r.get("mean_n"), 3),
                         g(r.get("mean_dlt"), 3), model)
        console.print(rich)
    console.print(simulation.describe(), highlight=False)
    console.print(f"toxicity: {simulation.settings['toxicity']}", highlight=False)


_PRIOR = re.compile(r"^\s*(grade([1-9])|slope|background|onset)\s*=\s*(Normal|Beta|Uniform)\(\s*([^,]+?)\s*,\s*([^)]+?)\s*\)\s*$")
_FAMILY = {"slope": "Normal", "background": "Beta", "onset": "Uniform"}


def toxicity_priors(items: list[str]) -> dict:
    """ToxicityModel keyword arguments from --tox-prior items (fail() names a malformed one)."""
    from ..trial import ToxicityModel

    grades = dict(enumerate(ToxicityModel().intercepts, start=1))
    out = {}
    for item in items:
        match = _PRIOR.match(item)
        if not match:
            fail(f"--tox-prior {item!r} is not NAME=FAMILY(A,B): grade1=Normal(0.7,0.6), slope=Normal(1.5,0.75), "
                 "background=Beta(1,49) or onset=Uniform(1,8)")
        name, grade, family, a, b = match.groups()
        expected = "Normal" if grade else _FAMILY[name]
        if family != expected:
            fail(f"--tox-prior {item!r}: {name} takes a {expected} prior")
        try:
            values = (float(a), float(b))
        except ValueError:
            fail(f"--tox-prior {item!r}: the two parameters must be numbers")
        if not all(math.isfinite(v) for v in values):
            fail(f"--tox-prior {item!r}: the two parameters must be finite")
        if grade:
            grades[int(grade)] = values
        else:
            out[{"slope": "slope", "background": "background", "onset": "onset_days"}[name]] = values
    thresholds = sorted(grades)
    if thresholds != list(range(1, len(thresholds) + 1)):
        fail(f"--tox-prior: grade thresholds must run 1, 2, ... without gaps, got {thresholds}")
    out["intercepts"] = tuple(grades[g] for g in thresholds)
    return out
