"""Population-fit speed: pkpd.fit against Stan (pystan), same models, data and priors.

    python benchmarks/fit_speed.py [--quick] [--case multiphasic|antigen_driven|full]
                                   [--stan-chains C] [--stan-draws D] [--stan-timeout SECONDS]

Cases: (a) `multiphasic` on 90 simulated subjects, (b) `antigen_driven` with transgene and B cells
on 20 subjects on the trials' schedule (day -1, 0, 3, ..., 27, monthly to 365), (c) `full`: the
full joint model (cytokines at quasi-steady state, immunoglobulins) on the example cohort's 41
subjects and ten analytes, pkpd only (Stan's bound is case (b)'s). For each engine
it prints compile time, sampling time, leapfrog steps per draw, divergences, the largest R-hat and the minimum bulk
ESS over the population parameters (typical values, IIV SDs, residual SDs) per second of
sampling and per core it occupied (each engine runs one chain per core, up to the machine's
cores, so a Stan run with fewer chains than cores compares fairly), then the ratio ours / Stan
and whether the posteriors agree (typical values: difference of medians within 0.5 posterior SD). Both engines run side by side on this machine; the ratio is
what compares across machines. The Stan run may be shorter (ESS per second is comparable).
Both engines start from the same point: pkpd.fit's, from the individual fits. A Stan run still
sampling after --stan-timeout seconds (default 3600) is stopped; its ESS per second is then
bounded above (ESS <= N log10 N, arviz's cap, over the N draws it was asked for) and the ratio
reported is a lower bound, named in the last line's `lower_bounds=`.

pystan is not a dependency of cart-pkpd: `pip install pystan` (it bundles Stan and its compiler;
needs g++). The last line is machine-readable:
    fit_speed: multiphasic_ratio=R1 antigen_driven_ratio=R2 antigen_driven_wall_s=W full_wall_s=F
               compile_small_s=C grad_growth_4x=G
(F: the full joint model's wall time, individual fits, compilation and sampling; C: a small user model refitted to new
data in a fresh process, benchmarks/compile_time.py; G: the larger growth of one gradient's cost
per 4x subjects, 20 -> 80 -> 320, benchmarks/scaling.py, 4.0 being linear.)
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from pkpd.fit import PopulationSpec, fit, fit_individual
from pkpd.fit.population import initial_values
from pkpd.models import load
from pkpd.simulate import simulate
from pkpd.simulate.compiled import Design

def _arguments(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser(description="Population-fit speed: pkpd.fit against Stan (pystan).")
    parser.add_argument("--quick", action="store_true", help="shorter runs of both engines (a smoke test)")
    parser.add_argument("--case", choices=["all", "multiphasic", "antigen_driven", "full"], default="all",
                        help="one case (all: the three; the full joint model takes about an hour on 2 cores)")
    parser.add_argument("--stan-chains", type=int, default=4)
    parser.add_argument("--stan-draws", type=int, default=None,
                        help="Stan warm-up and draws per chain (default 500; 200 with --quick)")
    parser.add_argument("--stan-ode", choices=["rk45", "bdf"], default="rk45",
                        help="Stan's ODE solver for antigen_driven (ode_rk45_tol or ode_bdf_tol)")
    parser.add_argument("--stan-timeout", type=float, default=3600.0,
                        help="seconds of Stan sampling before it is stopped (the ratio is then a lower bound)")
    return parser.parse_args(argv)


# the command line's settings when run, the defaults when imported (the cases are reusable)
ARGS = _arguments(sys.argv[1:] if __name__ == "__main__" else [])
QUICK = ARGS.quick
OURS = dict(chains=4, tune=1000, draws=1000) if not QUICK else dict(chains=4, tune=300, draws=300)
_STAN_DRAWS = ARGS.stan_draws or (500 if not QUICK else 200)
STAN = dict(num_chains=ARGS.stan_chains, num_warmup=_STAN_DRAWS, num_samples=_STAN_DRAWS)
CASES = ARGS.case
STAN_TIMEOUT = ARGS.stan_timeout


def _over_scalars(draws: dict[str, np.ndarray], statistic) -> list[float]:
    """`statistic` of each scalar in arrays shaped (chain, draw, ...)."""
    values = []
    for x in draws.values():
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        values += [float(statistic(flat[:, :, j])) for j in range(flat.shape[2])]
    return values


def min_ess(draws: dict[str, np.ndarray]) -> float:
    """Smallest bulk ESS over arrays shaped (chain, draw, ...)."""
    import arviz as az

    return min(_over_scalars(draws, lambda x: az.ess(x, method="bulk")))


def max_rhat(draws: dict[str, np.ndarray]) -> float:
    """Largest (rank-normalised) R-hat over arrays shaped (chain, draw, ...)."""
    import arviz as az

    return max(_over_scalars(draws, az.rhat))


def ours(model, cohort) -> dict:
    t0 = time.perf_counter()
    # the individual fits are part of pkpd.fit (and of its wall time); made here so that Stan
    # starts from the same point
    spec = PopulationSpec.default(model)
    individual = fit_individual(model, cohort, estimate=spec.estimated, steps=spec.steps, starts=3, seed=1)
    result = fit(model, cohort, seed=1, progress=False, individual=individual, **OURS)
    wall = time.perf_counter() - t0
    post = result.posterior
    draws = {k: post[k].transpose("chain", "draw", ...).to_numpy() for k in ("mu", "omega", "sigma")}
    attrs = result.tree.attrs
    return {"compile_s": attrs["compile_seconds"], "sample_s": attrs["sampling_seconds"], "wall_s": wall,
            "cores": min(OURS["chains"], os.cpu_count() or 1),
            "steps": result.steps_per_draw(), "divergences": result.divergences(), "min_ess": min_ess(draws),
            "max_rhat": max_rhat(draws),
            "typical": post["mu"].transpose("chain", "draw", "parameter").to_numpy(),
            "solver_error": attrs["solver_max_log_error"], "initial": initial_values(spec, individual)}


def stan_inits(initial: dict, data: dict, chains: int) -> list[dict]:
    """pkpd.fit's starting point (from the individual fits) in the Stan model's parameters."""
    assert len(initial["omega"]) == len(initial["mu"]), "the Stan models give every parameter variability"
    z = (initial["centre"] - initial["mu"][None, :]) / initial["omega"][None, :]
    point = {"mu": initial["mu"].tolist(), "omega": initial["omega"].tolist(), "z": z.tolist(),
             "sigma": data["sigma_default"]}
    return [point] * chains


def _stan_child(code: str, data: dict, init: list[dict], settings: dict, queue) -> None:
    """Build and sample in a process of its own (and process group), so that a run past the
    time limit can be stopped with its chains."""
    import stan as pystan

    os.setsid()
    t0 = time.perf_counter()
    posterior = pystan.build(code, data=data, random_seed=1)
    queue.put(time.perf_counter() - t0)
    t0 = time.perf_counter()
    fit_ = posterior.sample(**settings, init=init)
    queue.put((time.perf_counter() - t0, {k: np.asarray(fit_[k]) for k in
                                          ("mu", "omega", "sigma", "n_leapfrog__", "divergent__")}))


def stan(code: str, data: dict, names: list[str], initial: dict) -> dict:
    import multiprocessing
    import queue as queues
    import signal

    chains = STAN["num_chains"]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_stan_child, args=(code, data, stan_inits(initial, data, chains), STAN, results))
    # the chains run in a process group of their own: stop them however this run ends (a
    # SIGTERM becomes SystemExit, so that the `finally` below runs)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    child.start()
    try:
        compile_s = results.get()
        out = {"compile_s": compile_s, "cores": min(chains, os.cpu_count() or 1), "names": names}
        try:
            sample_s, fit_ = results.get(timeout=STAN_TIMEOUT)
        except queues.Empty:
            fit_ = None
    finally:
        # pystan's worker processes outlive the run (and would keep the child from exiting)
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:  # the child had not yet made its group
            child.kill()
        child.join()
        signal.signal(signal.SIGTERM, previous)
    if fit_ is None:
        # not finished: no ESS can be computed, but it cannot exceed arviz's cap N log10 N
        n = chains * STAN["num_samples"]
        return {**out, "timed_out": True, "sample_s": float(STAN_TIMEOUT), "steps": math.nan,
                "divergences": -1, "min_ess": n * math.log10(n), "max_rhat": math.nan, "typical": None}

    def reshape(name):
        x = fit_[name]  # (..., draws*chains), chain-major within draws
        x = x.reshape(*x.shape[:-1], -1, chains)  # pystan orders draws as (draw, chain)
        return np.moveaxis(np.moveaxis(x, -1, 0), -1, 1)

    draws = {k: reshape(k) for k in ("mu", "omega", "sigma")}
    return {**out, "timed_out": False, "sample_s": sample_s, "steps": float(np.mean(fit_["n_leapfrog__"])),
            "divergences": int(np.sum(fit_["divergent__"])), "min_ess": min_ess(draws), "max_rhat": max_rhat(draws),
            "typical": draws["mu"]}


def agree(a: np.ndarray, b: np.ndarray) -> bool:
    """Medians of each typical value within 0.5 posterior SD of each other."""
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    sd = np.sqrt(0.5 * (a2.var(0) + b2.var(0)))
    return bool(np.all(np.abs(np.median(a2, 0) - np.median(b2, 0)) <= 0.5 * sd))


def common_priors(spec: PopulationSpec) -> dict:
    priors = [spec.prior(n) for n in spec.estimated]
    return {"prior_mu": [math.log(p.median) for p in priors], "prior_sd": [p.sigma for p in priors],
            "omega_scale": [max(0.5, 2 * (spec.model.parameter(n).iiv or 0.25)) for n in spec.iiv]}


def case_multiphasic():
    from stan_models import MULTIPHASIC

    model = load("multiphasic")
    cohort = simulate(model, ["1e6/kg"], n=90, seed=11)
    spec = PopulationSpec.default(model)
    d = Design(model, cohort)
    data = {"N": len(cohort.subject_ids), "M": d.n_obs, "subject": (d.subject_index + 1).tolist(),
            "time": d.time.tolist(), "y": d.value.tolist(), "censored": d.censored.tolist(),
            "sigma_default": model.observations["transgene"].sigma, **common_priors(spec)}
    return model, cohort, MULTIPHASIC, data, spec.estimated


def case_antigen_driven():
    from stan_models import ANTIGEN_DRIVEN

    model = load("antigen_driven")
    cohort = simulate(model, ["1e6/kg"], n=20, seed=7, analytes=["transgene", "bcells"])
    spec = PopulationSpec.default(model)
    d = Design(model, cohort)
    counts = np.bincount(d.subject_index, minlength=len(cohort.subject_ids))
    k_names = ["kb", "kem", "beta", "kexh", "kout", "kkill", "sin", "eld", "sld"]
    covs = d.covariates
    data = {"N": len(cohort.subject_ids), "M": d.n_obs, "start": (d.start[:-1] + 1).tolist(),
            "count": counts.tolist(), "analyte": (np.array([["transgene", "bcells"].index(d.analyte_names[a])
                                                             for a in d.analyte]) + 1).tolist(),
            "time": d.time.tolist(), "y": d.value.tolist(), "censored": d.censored.tolist(),
            "dose": covs[:, 0].tolist(), "ld": covs[:, 1].tolist(),
            "k": [model.parameter(n).typical for n in k_names], "scale": model.parameter("scale").typical,
            "sigma_default": [model.observations[a].sigma for a in ("transgene", "bcells")], **common_priors(spec),
            # rk45 at a relative tolerance 3x tighter than pkpd's adaptive solver (3e-5 of each
            # state's running peak); the absolute one is far below every state's scale
            "rtol": 1e-5, "atol": 1e-6}
    assert spec.estimated == ["rho", "alpha", "fblood", "b0", "kkills", "ks"]
    code = ANTIGEN_DRIVEN.replace("ode_rk45_tol", f"ode_{ARGS.stan_ode}_tol")
    return model, cohort, code, data, spec.estimated


#: the full joint model: CAR-T kinetics, B cells, the four cytokines at quasi-steady state and the
#: four immunoglobulins, on every analyte of the example cohort it predicts
FULL_MODEL = "antigen_driven+cytokines_qss+immunoglobulins"


def case_full():
    """(model, cohort): the full joint model on the example cohort (41 subjects). No Stan side:
    Stan's rk45 did not finish 2 x (100 + 100) iterations of antigen_driven alone in 25 minutes
    (README), a model this one contains, so its ratio is bounded by that case's."""
    from pkpd import example_data, read_cohort

    model = load(FULL_MODEL)
    cohort = read_cohort(example_data("adam"))
    return model, cohort.select_analytes([a for a in model.analytes if a in cohort.analytes])


def report_full(a: dict, cohort) -> None:
    print(f"\n== full joint model {FULL_MODEL}, {len(cohort.subject_ids)} subjects, "
          f"{len(cohort.observations)} records of {', '.join(cohort.analytes)}")
    print(f"pkpd: compile {a['compile_s']:.1f} s, sampling {a['sample_s']:.1f} s, wall {a['wall_s']:.0f} s "
          f"(4 x ({OURS['tune']} + {OURS['draws']})), {a['steps']:.1f} steps/draw, {a['divergences']} divergences, "
          f"min bulk ESS {a['min_ess']:.0f}, max R-hat {a['max_rhat']:.3f}, solver max |log error| "
          f"{a['solver_error']:.1e}; Stan: not run (see case_full)")


def report(label: str, a: dict, b: dict) -> tuple[float, bool]:
    ours_rate, stan_rate = (r["min_ess"] / (r["sample_s"] * r["cores"]) for r in (a, b))
    print(f"\n== {label}")
    print(f"{'':10s} {'compile s':>10s} {'sampling s':>11s} {'steps/draw':>11s} {'divergent':>10s} "
          f"{'min ESS':>8s} {'max R-hat':>10s} {'cores':>6s} {'ESS/core-s':>11s}")
    for name, r, rate in (("pkpd", a, ours_rate), ("Stan", b, stan_rate)):
        print(f"{name:10s} {r['compile_s']:10.1f} {r['sample_s']:11.1f} {r['steps']:11.1f} {r['divergences']:10d} "
              f"{r['min_ess']:8.0f} {r['max_rhat']:10.3f} {r['cores']:6d} {rate:11.3f}")
    ratio = ours_rate / stan_rate
    if b["timed_out"]:
        print(f"Stan did not finish within {b['sample_s']:.0f} s of sampling: its ESS/core-s above is an upper "
              f"bound (ESS <= N log10 N over its N draws), so the ratio is a lower bound")
    agreement = "not checked" if b["timed_out"] else agree(a["typical"], b["typical"])
    print(f"ratio ours/Stan (min bulk ESS per core-second of sampling): {'>= ' if b['timed_out'] else ''}{ratio:.2f}; "
          f"pkpd wall {a['wall_s']:.0f} s; solver max |log error| {a['solver_error']:.1e}; "
          f"posteriors agree: {agreement}")
    return ratio, b["timed_out"]


def main() -> None:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    results = {}
    for label, case in (("multiphasic, 90 subjects", case_multiphasic),
                        ("antigen_driven (transgene + B cells), 20 subjects", case_antigen_driven)):
        if CASES != "all" and not label.startswith(CASES):
            results[label] = ((float("nan"), False), {"wall_s": float("nan")})
            continue
        model, cohort, code, data, names = case()
        a = ours(model, cohort)
        print(f"[{label}] pkpd: sampling {a['sample_s']:.1f} s, {a['steps']:.1f} steps/draw, min ESS "
              f"{a['min_ess']:.0f}, max R-hat {a['max_rhat']:.3f}, divergences {a['divergences']}", flush=True)
        b = stan(code, data, names, a["initial"])
        results[label] = (report(label, a, b), a)
    full_wall = float("nan")
    if CASES in ("all", "full"):
        model, cohort = case_full()
        a = ours(model, cohort)
        report_full(a, cohort)
        full_wall = a["wall_s"]
    ((r1, bound1), _), ((r2, bound2), a2) = results.values()
    bounds = [name for name, bound in (("multiphasic", bound1), ("antigen_driven", bound2)) if bound]
    # compile time of a small user model refitted to new data (fresh processes: compile_time.py) and
    # the growth of one gradient's cost from 80 to 320 subjects (scaling.py; 4.0 is linear)
    import compile_time
    import scaling

    compile_time.main()
    growth = max(max(scaling.growth(scaling.measure(case, [20, 80, 320], 1.0))) for case in scaling.CASES)
    print(f"fit_speed: multiphasic_ratio={r1:.2f} antigen_driven_ratio={r2:.2f} "
          f"antigen_driven_wall_s={a2['wall_s']:.0f} full_wall_s={full_wall:.0f} "
          f"compile_small_s={compile_time.LAST['rerun_s']:.1f} "
          f"grad_growth_4x={growth:.2f}" + (f" lower_bounds={','.join(bounds)}" if bounds else ""))


if __name__ == "__main__":
    main()
