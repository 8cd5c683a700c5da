"""`pkpd.fit`: the Bayesian hierarchical population fit of any model to a cohort."""

from __future__ import annotations

import hashlib
import json
import os
import time
from importlib.metadata import version
from typing import Mapping, Sequence

import numpy as np
import xarray as xr

from ..data.cohort import Cohort
from ..models import Model, load
from ..simulate.compiled import Tolerances, predict_compiled
from ..simulate.reduction import check_reduction
from ..simulate.solve import predict_reference
from .compile import compile_model
from .individual import fit_individual, solver_tolerance
from .population import (PopulationSpec, build_pymc_model, initial_values, pointwise_loglik, spec_from_record,
                         spec_record)
from .priors import Prior
from .result import FitResult
from .run import model_record, rebuild_model



def fit(model: Model | str, cohort: Cohort, *, chains: int = 4, draws: int = 1000, tune: int = 1000,
        seed: int | None = None, iiv: Sequence[str] | None = None, fixed_effects: Sequence[str] | None = None,
        covariates: Sequence[str] = (), priors: Mapping[str, Prior] | None = None,
        correlated: bool = False, censoring: str = "M3", steps: Tolerances | None = None,
        target_accept: float = 0.8, progress: bool = True, cores: int | None = None,
        individual: xr.Dataset | None = None, starts: int = 3) -> FitResult:
    """Fit a hierarchical model by NUTS (nutpie); the FitResult carries the model, the
    specification, the cohort and the posterior DataTree.

    iiv:           parameters with log-normal inter-individual variability (default: the model's)
    fixed_effects: further parameters estimated without variability
    covariates:    effects on typical values, 'rho~lymphodepletion', 'cmax~dose:power', ...
    priors:        replacements of the model's priors by name (pkpd.fit.priors): a parameter's
                   typical value LogNormal(median, sigma), omega_NAME HalfNormal(scale),
                   sigma_ANALYTE and sigma_add_ANALYTE LogNormal(median, sigma)
    correlated:    correlated random effects through an LKJ prior
    censoring:     'M3' (default) or 'M4' for values below the LLOQ
    individual:    individual fits to start from (default: computed with pkpd.fit_individual,
                   from `starts` starting values each, so that several modes are noticed)
    """
    import nutpie

    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must lie between 0 and 1 (0.8 by default; 0.9 or 0.95 when the "
                         f"diagnostics report divergences), not {target_accept}")
    model = load(model)
    observed = [a for a in model.analytes if (cohort.observations["analyte"] == a).any()]
    spec = PopulationSpec.default(model, iiv=iiv, fixed_effects=fixed_effects, covariates=covariates,
                                  priors=priors, correlated=correlated, censoring=censoring, steps=steps,
                                  analytes=observed)
    started = time.perf_counter()
    early = _compile_beside(spec, cohort, cores) if individual is None else None
    try:
        if individual is None:
            # the parameters with variability: one without it is not determined by a subject alone
            # (its value is shared), and starts from its typical value
            individual = fit_individual(model, cohort, estimate=list(spec.iiv) or spec.estimated,
                                        steps=spec.steps, starts=starts, seed=0 if seed is None else int(seed))
        init = initial_values(spec, individual)
        pm_model, pieces = build_pymc_model(spec, cohort, init)
        t0 = time.perf_counter()
        compiled, compiled_from = compile_model(pm_model, population_build(spec, cohort, init), started=early)
        compile_s = time.perf_counter() - t0
    finally:
        if early is not None:
            early.cancel()
    rng_seed = int(np.random.SeedSequence(seed).generate_state(1)[0]) if seed is None else int(seed)
    t0 = time.perf_counter()
    tree = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=rng_seed,
                         cores=cores or min(chains, os.cpu_count() or 1), progress_bar=progress,
                         target_accept=target_accept, save_warmup=False)
    sample_s = time.perf_counter() - t0
    tree = _complete(tree, spec, cohort, pieces)
    solver_error = _solver_error(spec, cohort, tree, pieces)
    reduction = _reduction_check(spec, cohort, tree, pieces)
    tree.attrs.update(_provenance(spec, cohort, seed=rng_seed, chains=chains, draws=draws, tune=tune,
                                  target_accept=target_accept))
    tree.attrs.update(compile_seconds=compile_s, compiled=compiled_from, sampling_seconds=sample_s,
                      total_seconds=time.perf_counter() - started, solver_max_log_error=solver_error,
                      solver_tolerance=solver_tolerance(model), analytes=json.dumps(pieces["records"]["observed"]),
                      individual_modes=json.dumps(_modes(individual)))
    if reduction is not None:
        tree.attrs["reduction_check"] = json.dumps(reduction.to_dict())
    return FitResult(tree, model, spec, cohort)


def population_build(spec: PopulationSpec, cohort: Cohort, initial):
    """(function, arguments) that make `build_pymc_model(spec, cohort, initial)`'s PyMC model in
    another process (`pkpd.fit.compile.compile_model`'s `build`), or None for a model with a
    module built in Python (without its source file, it cannot be rebuilt there)."""
    if {s.module for s in spec.model.sources} != {m.name for m in spec.model.modules}:
        return None
    return population_model, (model_record(spec.model), spec_record(spec), cohort, initial)


def _compile_beside(spec: PopulationSpec, cohort: Cohort, cores: int | None):
    """The sampler's model compiling in another process while the individual fits run (a
    `pkpd.fit.precompile.Compiling`), or None for a model built in Python and for a fit held to
    one core (by the machine, or by its caller: a comparison's workers fit with cores=1, where a
    second process would compete with the other workers). Its compiled code does not depend on
    the individual fits: their results (initial values, the random effects' centres and
    information) enter the sampler's model as data."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    build = population_build(spec, cohort, {})
    if min(available, cores or available) < 2 or build is None:
        return None
    from .precompile import start

    return start(*build)


def population_model(model_attrs: dict, spec_attrs: dict, cohort: Cohort, initial):
    """The PyMC model of `build_pymc_model`, from the records of the model and the specification."""
    model = rebuild_model(model_attrs, "the model handed to the compile process")
    return build_pymc_model(spec_from_record(model, spec_attrs), cohort, initial)[0]


def _modes(individual: xr.Dataset) -> dict[str, str]:
    """Subjects whose individual fits found two equally good optima: {subject: description}."""
    out = {}
    if "n_modes" not in individual:
        return out
    for s, n, reason in zip(individual["subject"].values, individual["n_modes"].values, individual["reason"].values):
        if int(n) > 1:
            out[str(s)] = str(reason).split(";")[0]
    return out


def _complete(tree, spec: PopulationSpec, cohort: Cohort, pieces: dict):
    """Add observed_data, constant_data and log_likelihood (per record and per subject)."""
    design, records = pieces["design"], pieces["records"]
    post = tree["posterior"]
    theta = post["theta"].transpose("chain", "draw", "subject", "parameter").to_numpy()
    parts = [post[var].transpose("chain", "draw", dim).to_numpy()
             for var, dim in (("sigma", "analyte"), ("sigma_add", "additive_analyte")) if var in post]
    residual = np.concatenate(parts, axis=-1)
    C, D = theta.shape[:2]
    loglik = np.empty((C, D, design.n_obs))
    for c in range(C):
        for d in range(D):
            loglik[c, d] = pointwise_loglik(spec, pieces, theta[c, d], residual[c, d])
    subject_of = np.asarray(cohort.subject_ids)[design.subject_index]
    per_subject = np.stack([loglik[..., design.subject_index == i].sum(-1)
                            for i in range(len(cohort.subject_ids))], axis=-1)
    obs_coords = {"obs": np.arange(design.n_obs)}
    observed = xr.Dataset({"y": ("obs", design.value)}, coords=obs_coords)
    constant = xr.Dataset({
        "obs_subject": ("obs", subject_of.astype(str)), "obs_time": ("obs", design.data_time),
        "obs_analyte": ("obs", np.asarray(design.analyte_names)[design.analyte].astype(str)),
        "obs_lloq": ("obs", records["lloq"]), "obs_censored": ("obs", design.censored),
        "obs_record": ("obs", design.records),
        "covariate_matrix": (("subject", "covariate_effect"), pieces["X"]),
    }, coords={**obs_coords, "subject": cohort.subject_ids, "covariate_effect": pieces["covariate_labels"]})
    # two views of the same likelihood: per record, and summed per subject (the unit of LOO)
    log_lik = xr.Dataset({"y": (("chain", "draw", "obs"), loglik),
                          "y_subject": (("chain", "draw", "subject"), per_subject)},
                         coords={"chain": post["chain"].values, "draw": post["draw"].values,
                                 **obs_coords, "subject": cohort.subject_ids})
    children = {name: tree[name] for name in tree.children}
    children.update(observed_data=xr.DataTree(observed), constant_data=xr.DataTree(constant),
                    log_likelihood=xr.DataTree(log_lik))
    return xr.DataTree.from_dict({name: (node.to_dataset() if isinstance(node, xr.DataTree) else node)
                                  for name, node in children.items()})


def _solver_error(spec, cohort, tree, pieces, n_draws: int = 8) -> float:
    """Largest |log(compiled / LSODA)| over records at a few posterior draws."""
    design, predictions = pieces["design"], pieces["predictions"]
    theta = tree["posterior"]["theta"].stack(sample=("chain", "draw")).transpose("sample", "subject", "parameter")
    picks = np.linspace(0, theta.sizes["sample"] - 1, min(n_draws, theta.sizes["sample"])).astype(int)
    worst = 0.0
    for s in picks:
        P = predictions.individual(theta.isel(sample=int(s)).to_numpy())
        fast, _ = predict_compiled(design, P, [], spec.steps)
        exact = predict_reference(design, P.T, rtol=1e-10, atol=1e-13)
        ok = (exact > 1e-8) & (fast > 1e-8)
        if ok.any():
            worst = max(worst, float(np.max(np.abs(np.log(fast[ok] / exact[ok])))))
    return worst


def _reduction_check(spec, cohort, tree, pieces):
    """A quasi-steady-state module checked against the ODEs it approximates, at the subjects'
    posterior median parameters (pkpd.simulate.reduction); None for other models."""
    if not any(m.approximates for m in spec.model.modules):
        return None
    theta = tree["posterior"]["theta"].median(("chain", "draw")).transpose("subject", "parameter").to_numpy()
    return check_reduction(spec.model, cohort, pieces["predictions"].individual(theta),
                           analytes=pieces["records"]["observed"])


def data_hash(cohort: Cohort) -> str:
    text = cohort.observations.to_csv(index=False) + cohort.doses.to_csv(index=False) + \
        cohort.subjects.to_csv() + cohort.events.to_csv(index=False) + cohort.time_unit
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _provenance(spec: PopulationSpec, cohort: Cohort, **settings) -> dict:
    packages = {name: _version(name) for name in ("cart-pkpd", "pymc", "pytensor", "nutpie", "numba",
                                                  "arviz", "numpy", "scipy", "xarray")}
    return {
        **model_record(spec.model), "data_hash": data_hash(cohort), "time_unit": spec.model.time_unit,
        "data_source": str(cohort.source), "seed": settings["seed"],
        "sampler": "nutpie NUTS (numba backend)",
        "sampler_settings": json.dumps({k: v for k, v in settings.items() if k != "seed"}),
        "spec": json.dumps(spec_record(spec)),
        "packages": json.dumps(packages),
        "units": json.dumps({p.name: p.unit for p in spec.model.parameters}),
    }


def _version(name: str) -> str:
    try:
        return version(name)
    except Exception:
        return "unknown"
