"""How the cost of one log-density gradient grows with the number of subjects, and how many
virtual patient-years per second the compiled solver simulates.

    python benchmarks/scaling.py [--subjects 20 80 320] [--seconds 2] [--patients 40000]

For a closed-form model (`multiphasic`, transgene) and an ODE model (`antigen_driven`,
transgene and B cells on the trials' schedule), cohorts of 20, 80 and 320 simulated subjects;
for each, the compiled likelihood the sampler calls (`pkpd.fit.op.LogLikelihoodOp`: every
record's prediction with its sensitivities, the likelihood and its gradient with respect to
all subjects' parameters) is timed at the typical values, repeated for `--seconds` and the
median of five batches kept. Printed: milliseconds per gradient, per subject, and the growth
factor for each 4x step in subjects (4.0 = linear).

Simulation throughput: `--patients` virtual patients of `antigen_driven` (their designs selected
from 20 donors, as dose selection and trial simulation build them), predicted at the trials'
schedule to day 365 (transgene, B cells), all cores, the best of three runs; patient-years of
follow-up per second, with the settings dose selection and trial simulation solve virtual
patients with after their check against the fit's (`pkpd.dose.selection.loose_steps`:
VIRTUAL_RTOL, VIRTUAL_ATOL, records interpolated within steps) and at a fit's.

The last line is machine-readable:
    scaling: multiphasic_growth_4x=G1 antigen_driven_growth_4x=G2 patient_years_per_s=Y fit_tolerance_patient_years_per_s=Z
(the growth factors of the larger step; Y at the virtual patients' tolerance)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace

import numpy as np

from pkpd.fit.op import LogLikelihoodOp, Predictions
from pkpd.fit.population import PopulationSpec, record_arrays
from pkpd.models import load
from pkpd.simulate import draw_parameters, simulate
from pkpd.dose.selection import loose_steps
from pkpd.simulate.compiled import Design, Tolerances

CASES = {"multiphasic": ("multiphasic", ["transgene"]), "antigen_driven": ("antigen_driven", ["transgene", "bcells"])}


def gradient_function(model, cohort):
    """(f, arguments): f(*arguments) is one evaluation of the sampler's likelihood and gradient."""
    spec = PopulationSpec.default(model)
    design = Design(model, cohort)
    fixed = np.tile([p.typical for p in model.parameters], (len(cohort.subject_ids), 1))
    predictions = Predictions(design, spec.estimated, fixed, spec.steps)
    records = record_arrays(spec, design)
    op = LogLikelihoodOp(predictions, records, m4=False)
    log_theta = np.log(fixed[:, predictions.est])
    residual = np.array([model.observations[a].sigma for a in records["sigma_analytes"]]
                        + [model.observations[a].additive for a in records["additive_analytes"]])
    arguments = (log_theta, residual, records["value"], records["censored"].astype(np.int64), *op.data().values())
    return op.function(), arguments


def seconds_per_call(f, arguments, budget: float) -> float:
    f(*arguments)  # compile
    batches = []
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < budget / 5:
            f(*arguments)
            n += 1
        batches.append((time.perf_counter() - t0) / n)
    return float(np.median(batches))


def measure(case: str, subjects: list[int], budget: float) -> list[tuple[int, int, float]]:
    """[(subjects, records, seconds per gradient)] for one case."""
    name, analytes = CASES[case]
    model = load(name)
    out = []
    for n in subjects:
        cohort = simulate(model, ["1e6/kg"], n=n, seed=7, analytes=analytes)
        f, arguments = gradient_function(model, cohort)
        out.append((n, len(arguments[2]), seconds_per_call(f, arguments, budget)))
    return out


def growth(rows: list[tuple[int, int, float]]) -> list[float]:
    """Cost ratio of each step in subjects, scaled to a 4x step (4.0 is linear)."""
    return [(b[2] / a[2]) * 4 / (b[0] / a[0]) for a, b in zip(rows, rows[1:])]


def throughput(patients: int, settings: dict) -> dict:
    """{name: (patient-years per second, seconds)} of antigen_driven predictions for `patients`
    virtual patients, solved with each of `settings` ({name: Tolerances}), the settings taken in
    turn three times and the best run of each kept (the machine is shared)."""
    from pkpd.simulate.compiled import predict_compiled

    model = load("antigen_driven")
    cohort = simulate(model, ["1e6/kg"], n=20, seed=7, analytes=["transgene", "bcells"])
    donors = Design(model, cohort)
    pick = np.random.default_rng(1).integers(0, 20, patients)
    design = donors.subset(pick)
    params = draw_parameters(model, patients, np.random.default_rng(2))  # the model's variability
    P = np.ascontiguousarray(params[model.parameter_names].to_numpy(float))
    seconds = dict.fromkeys(settings, math.inf)
    for steps in settings.values():
        predict_compiled(donors, P[:20], steps=steps)  # compile
    for _ in range(3):
        for name, steps in settings.items():
            t0 = time.perf_counter()
            pred, _ = predict_compiled(design, P, steps=steps)
            seconds[name] = min(seconds[name], time.perf_counter() - t0)
            assert np.isfinite(pred).all()
    years = (design.time.max() - 0.0) / 365.25
    return {name: (patients * years / t, t) for name, t in seconds.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[20, 80, 320])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per cohort size")
    parser.add_argument("--patients", type=int, default=40000, help="virtual patients for the throughput")
    args = parser.parse_args(argv)
    largest = {}
    for case in CASES:
        rows = measure(case, args.subjects, args.seconds)
        print(f"\n== {case}: one log-density gradient (all subjects' parameters)")
        print(f"{'subjects':>9s} {'records':>8s} {'ms/gradient':>12s} {'us/subject':>11s}")
        for n, records, seconds in rows:
            print(f"{n:9d} {records:8d} {1e3 * seconds:12.3f} {1e6 * seconds / n:11.1f}")
        factors = growth(rows)
        print("growth per 4x subjects: " + ", ".join(f"{a}->{b}: {g:.2f}" for (a, b), g in
                                                    zip(zip(args.subjects, args.subjects[1:]), factors)))
        largest[case] = max(factors) if factors else float("nan")
    virtual = loose_steps(Tolerances())
    rates = throughput(args.patients, {"virtual": virtual, "landed": replace(virtual, interpolate=False),
                                       "fit": Tolerances()})
    (rate, seconds), (landed_rate, _), (fit_rate, fit_seconds) = rates["virtual"], rates["landed"], rates["fit"]
    print(f"\n== simulation: {args.patients} virtual patients of antigen_driven to day 365")
    print(f"   as virtual patients are solved (rtol {virtual.rtol:g}, atol {virtual.atol:g}, records interpolated): "
          f"{seconds:.2f} s, {rate:,.0f} patient-years per second")
    print(f"   the same tolerances, the steps landing on every record: {landed_rate:,.0f} patient-years per second "
          f"(interpolated/landed {rate / landed_rate:.2f}x)")
    print(f"   at a fit's tolerance (rtol {Tolerances().rtol:g}): {fit_seconds:.2f} s, "
          f"{fit_rate:,.0f} patient-years per second")
    print("scaling: " + " ".join(f"{case}_growth_4x={g:.2f}" for case, g in largest.items())
          + f" patient_years_per_s={rate:.0f} fit_tolerance_patient_years_per_s={fit_rate:.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
