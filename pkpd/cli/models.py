"""`pkpd models list|show` and `pkpd simulate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rich.markup import escape

from .common import Table, console, fail, load_model, split_items, times_option

app = typer.Typer(help="The built-in models (compose them with +) and your own model files.", no_args_is_help=True)


@app.command("list")
def models_list() -> None:
    """List the built-in model modules."""
    from ..models import list_models

    table = Table(title="Built-in modules (compose as ck+pd+pd, e.g. antigen_driven+cytokines+immunoglobulins)")
    for col in ("name", "kind", "form", "time unit", "analytes", "description"):
        table.add_column(col)
    for module in list_models():
        form = "closed form" + (" + ODE" if module.rhs else "") if module.closed_form else "ODE"
        table.add_row(module.name, module.kind, form, module.time_unit,
                      ", ".join(o.analyte for o in module.observations), module.description)
    console.print(table)


@app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="Model name, a composition (a+b) or a model file.")]) -> None:
    """Parameters (units, typical values, bounds, priors, variability, sources), doses, states,
    analytes with their residual-error models and priors."""
    model = load_model(name)
    console.print(escape(model.describe()), highlight=False)
    table = Table(title=f"Parameters of {model.name} (time unit {model.time_unit})")
    for col in ("parameter", "unit", "typical", "bounds", "prior of typical value (log-normal)", "IIV (SD)",
                "prior of IIV SD", "description", "source"):
        table.add_column(col)
    for p in model.parameters:
        prior = p.prior_or_default
        iiv_prior = f"HalfNormal({max(0.5, 2 * p.iiv):g})" if p.iiv and not p.fixed else "-"
        table.add_row(p.name, p.unit, f"{p.typical:.4g}", "fixed" if p.fixed else f"{p.bounds[0]:.3g} - {p.bounds[1]:.3g}",
                      "-" if p.fixed else f"median {prior.median:.3g}, sd {prior.sigma:g}",
                      f"{p.iiv:g}" if p.iiv else "-", iiv_prior, p.description, p.source)
    console.print(table)
    obs = Table(title="Observations and residual error (each SD estimated, with its log-normal prior)")
    for col in ("analyte", "unit", "error model", "priors", "source"):
        obs.add_column(col)
    for o in model.observations.values():
        priors = []
        if o.has_sigma:
            p = o.sigma_prior_or_default
            priors.append(f"sigma_{o.analyte}: median {p.median:g}, sd {p.sigma:g}")
        if o.has_additive:
            p = o.additive_prior_or_default
            priors.append(f"sigma_add_{o.analyte}: median {p.median:g} {o.unit}, sd {p.sigma:g}")
        obs.add_row(o.analyte, o.unit, o.describe(), "; ".join(priors), o.source)
    console.print(obs)
    console.print(f"states: {', '.join(model.states) or 'none (closed form)'}")
    for module in model.modules:
        if module.approximates:
            console.print(f"{module.name} holds the states of {module.approximates} at quasi-steady state; every fit "
                          f"checks it against their ODEs (the `reduction` diagnostic)", highlight=False)
    console.print("override priors with --prior NAME=LogNormal(MEDIAN,SD) (typical values, sigma_ANALYTE, "
                  "sigma_add_ANALYTE) or --prior omega_NAME=HalfNormal(SCALE)", highlight=False)
    for module in model.modules:
        for ref in module.references:
            console.print(f"reference ({module.name}): {escape(str(ref))}", highlight=False)


def simulate_command(
        model: Annotated[str, typer.Argument(help="Model name, composition (a+b) or model file.")],
        out: Annotated[Path, typer.Option("-o", "--out", help="Output CSV (NONMEM style).")],
        dose: Annotated[Optional[list[str]], typer.Option("--dose", help="A regimen per group (repeatable): 3e8, 1e6/kg, '100 mg x6 q12h', '3e8 split 10/30/60 q1d + 3e8 at 90d'.")] = None,
        n: Annotated[int, typer.Option("--n", min=1, max=100_000, help="Subjects per regimen (at most 100000: the output is one CSV row per record).")] = 10,
        seed: Annotated[Optional[int], typer.Option(min=0, help="Random seed (reproducible results).")] = None,
        times: Annotated[Optional[str], typer.Option("--times", help="Sampling times in the model's time unit, comma-separated (default: the CAR-T trials' schedule for a model in days, a PK schedule otherwise).")] = None,
        product: Annotated[Optional[str], typer.Option(help="CD19, CD19/BCMA or CD19/CD20 (default: CD19 for models that read the product, else none).")] = None,
        lymphodepletion: Annotated[bool, typer.Option("--lymphodepletion/--no-lymphodepletion", help="Flu/Cy before infusion.")] = True,
        weight: Annotated[float, typer.Option(min=0.001, max=1000.0, help="Body weight (kg) for per-kg doses.")] = 70.0,
        disease: Annotated[str, typer.Option(help="Disease label of the virtual subjects.")] = "SLE",
        typical: Annotated[bool, typer.Option("--typical", help="The typical subject's noise-free predictions on a fine grid.")] = False,
        compiled: Annotated[bool, typer.Option("--compiled", help="Solve with the compiled solver the fits use (faster for many subjects) instead of LSODA.")] = False) -> None:
    """Simulate a virtual trial (or the typical curves) and write NONMEM-style rows."""
    from ..data import write_nonmem
    from ..simulate import SolverError, simulate, simulate_typical
    from ..simulate.compiled import Tolerances

    m = load_model(model)
    if out.is_dir():
        fail(f"-o {out} is a folder; give the path of the CSV file to write")
    regimens = split_items(dose) or ["1e6/kg" if m.dose_unit == "cells" else f"1 {m.dose_unit}"]
    grid = times_option(times)
    reads_product = {"cov_bcma", "cov_cd20", "cov_ld"} & {str(x) for e in [*m.symbols["rhs"], *m.symbols["initial"],
                                                                        *m.symbols["observe"].values()]
                                                        for x in e.free_symbols}
    product = product or ("CD19" if reads_product else None)
    try:
        if typical:
            cohort = simulate_typical(m, regimens, product=product, lymphodepletion=lymphodepletion, weight=weight,
                                      times=grid, steps=Tolerances() if compiled else None)
        else:
            cohort = simulate(m, regimens, n, seed=seed, product=product, lymphodepletion=lymphodepletion,
                              weight=weight, disease=disease, times=grid, steps=Tolerances() if compiled else None)
    except (ValueError, SolverError) as exc:
        fail(exc)
    if cohort.observations.empty:
        fail(f"model {m.name} has no observations to simulate")
    write_nonmem(cohort, out)
    console.print(f"wrote {out}: {len(cohort.subjects)} subject(s), {len(cohort.observations)} observations "
                  f"of {', '.join(cohort.analytes)}; times in {cohort.time_unit}")
