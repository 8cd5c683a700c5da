"""`pkpd.fit`: the Bayesian hierarchical population fit of any model to a cohort."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from importlib.metadata import version
from typing import Mapping, Sequence

import numpy as np
import xarray as xr

from ..data.cohort import Cohort
from ..models import LogNormal, Model, load
from ..simulate.compiled import Tolerances, predict_compiled
from ..simulate.predict import predict
from .individual import fit_individual
from .population import PopulationSpec, build_pymc_model, initial_values, pointwise_loglik
from .result import FitResult

#: the solver check flags a fit whose compiled predictions differ from LSODA by more than this
#: fraction of the smallest residual SD (on the log scale)
SOLVER_TOLERANCE = 0.1


def fit(model: Model | str, cohort: Cohort, *, chains: int = 4, draws: int = 1000, tune: int = 1000,
        seed: int | None = None, iiv: Sequence[str] | None = None, fixed_effects: Sequence[str] | None = None,
        covariates: Sequence[str] = (), priors: Mapping[str, LogNormal] | None = None,
        correlated: bool = False, censoring: str = "M3", steps: Tolerances | None = None,
        target_accept: float = 0.8, progress: bool = True, cores: int | None = None,
        individual: xr.Dataset | None = None) -> FitResult:
    """Fit a hierarchical model by NUTS (nutpie) and return a FitResult around an xarray DataTree.

    iiv:           parameters with log-normal inter-individual variability (default: the model's)
    fixed_effects: further parameters estimated without variability
    covariates:    effects on typical values, 'rho~lymphodepletion', 'cmax~dose:power', ...
    priors:        {parameter: LogNormal(median, sigma)} replacing the model's priors
    correlated:    correlated random effects through an LKJ prior
    censoring:     'M3' (default) or 'M4' for values below the LLOQ
    individual:    individual fits to start from (default: computed with pkpd.fit_individual)
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
    if individual is None:
        individual = fit_individual(model, cohort, estimate=spec.estimated, steps=spec.steps)
    init = initial_values(spec, individual)
    pm_model, pieces = build_pymc_model(spec, cohort, init)
    t0 = time.perf_counter()
    compiled = nutpie.compile_pymc_model(pm_model, default_initialization_strategy="support_point")
    compile_s = time.perf_counter() - t0
    rng_seed = int(np.random.SeedSequence(seed).generate_state(1)[0]) if seed is None else int(seed)
    t0 = time.perf_counter()
    tree = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=rng_seed,
                         cores=cores or min(chains, os.cpu_count() or 1), progress_bar=progress,
                         target_accept=target_accept, save_warmup=False)
    sample_s = time.perf_counter() - t0
    tree = _complete(tree, spec, cohort, pieces)
    solver_error = _solver_error(spec, cohort, tree, pieces)
    tree.attrs.update(_provenance(spec, cohort, seed=rng_seed, chains=chains, draws=draws, tune=tune,
                                  target_accept=target_accept))
    tree.attrs.update(compile_seconds=compile_s, sampling_seconds=sample_s,
                      total_seconds=time.perf_counter() - started, solver_max_log_error=solver_error,
                      solver_tolerance=SOLVER_TOLERANCE * min(o.sigma for o in model.observations.values()))
    return FitResult(tree)


def _complete(tree, spec: PopulationSpec, cohort: Cohort, pieces: dict):
    """Add observed_data, constant_data and log_likelihood (per record and per subject)."""
    design, records = pieces["design"], pieces["records"]
    post = tree["posterior"]
    theta = post["theta"].transpose("chain", "draw", "subject", "parameter").to_numpy()
    sigma = post["sigma"].transpose("chain", "draw", "analyte").to_numpy()
    C, D = theta.shape[:2]
    loglik = np.empty((C, D, design.n_obs))
    for c in range(C):
        for d in range(D):
            loglik[c, d] = pointwise_loglik(spec, pieces, theta[c, d], sigma[c, d])
    subject_of = np.asarray(cohort.subject_ids)[design.subject_index]
    per_subject = np.stack([loglik[..., design.subject_index == i].sum(-1)
                            for i in range(len(cohort.subject_ids))], axis=-1)
    obs_coords = {"obs": np.arange(design.n_obs)}
    observed = xr.Dataset({"y": ("obs", design.value)}, coords=obs_coords)
    constant = xr.Dataset({
        "obs_subject": ("obs", subject_of.astype(str)), "obs_time": ("obs", design.time),
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
        params = {name: P[:, i] for i, name in enumerate(spec.model.parameter_names)}
        exact = predict(spec.model, cohort, _frame(params, cohort), rtol=1e-10, atol=1e-13)
        exact = exact.to_numpy()[design.records]
        ok = (exact > 1e-8) & (fast > 1e-8)
        if ok.any():
            worst = max(worst, float(np.max(np.abs(np.log(fast[ok] / exact[ok])))))
    return worst


def _frame(params: dict, cohort: Cohort):
    import pandas as pd

    return pd.DataFrame(params, index=pd.Index(cohort.subject_ids, name="subject"))


def data_hash(cohort: Cohort) -> str:
    text = cohort.observations.to_csv(index=False) + cohort.doses.to_csv(index=False) + \
        cohort.subjects.to_csv()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _provenance(spec: PopulationSpec, cohort: Cohort, **settings) -> dict:
    packages = {name: _version(name) for name in ("cart-pkpd", "pymc", "pytensor", "nutpie", "numba",
                                                  "arviz", "numpy", "scipy", "xarray")}
    return {
        "model": spec.model.name, "model_hash": spec.model.hash, "data_hash": data_hash(cohort),
        "data_source": str(cohort.source), "seed": settings["seed"],
        "sampler": "nutpie NUTS (numba backend)",
        "sampler_settings": json.dumps({k: v for k, v in settings.items() if k != "seed"}),
        "spec": json.dumps({"iiv": list(spec.iiv), "fixed_effects": list(spec.fixed_effects),
                            "covariates": [c.label + (f":{c.form}" if c.form != "auto" else "") for c in spec.covariates],
                            "priors": {k: [v.median, v.sigma] for k, v in spec.priors.items()},
                            "correlated": spec.correlated, "censoring": spec.censoring,
                            "steps": _steps_record(spec.steps)}),
        "packages": json.dumps(packages),
        "units": json.dumps({p.name: p.unit for p in spec.model.parameters}),
    }


def _steps_record(steps):
    """The adaptive solver's tolerances as a dict."""
    return {"solver": "adaptive", **dataclasses.asdict(steps)}


def _version(name: str) -> str:
    try:
        return version(name)
    except Exception:
        return "unknown"
