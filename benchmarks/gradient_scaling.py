"""How the cost of one log-density gradient grows with the number of subjects.

    python benchmarks/gradient_scaling.py [--subjects 20 80 320] [--seconds 2]

For a closed-form model (`multiphasic`, transgene) and an ODE model (`antigen_driven`,
transgene and B cells on the trials' schedule), cohorts of 20, 80 and 320 simulated subjects;
for each, the compiled likelihood the sampler calls (`pkpd.fit.op.LogLikelihoodOp`: every
record's prediction with its sensitivities, the likelihood and its gradient with respect to
all subjects' parameters) is timed at the typical values, repeated for `--seconds` and the
median of five batches kept. Printed: milliseconds per gradient, per subject, and the growth
factor for each 4x step in subjects (4.0 = linear). The last line is machine-readable:
    gradient_scaling: multiphasic_growth_4x=G1 antigen_driven_growth_4x=G2 (the larger step)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from pkpd.fit.op import LogLikelihoodOp, Predictions
from pkpd.fit.population import PopulationSpec, record_arrays
from pkpd.models import load
from pkpd.simulate import simulate
from pkpd.simulate.compiled import Design

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


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[20, 80, 320])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per cohort size")
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
    print("gradient_scaling: " + " ".join(f"{case}_growth_4x={g:.2f}" for case, g in largest.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
