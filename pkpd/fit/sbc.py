"""Simulation-based calibration (Talts et al. 2018) of the population engine.

For each replication: draw population parameters from the prior, individual parameters from
them, and data on a small design (residual error, censoring below the LLOQ); fit; record the
rank of each true population parameter among the (thinned) posterior draws. If the engine is
calibrated, the ranks are uniform: a chi-square test per parameter and rank histograms show it.
The model is compiled once; each replication swaps in its data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..models import Model, load
from ..simulate import simulate
from ..simulate.compiled import Tolerances, predict_compiled
from .compile import compile_model
from .individual import fit_individual
from ..simulate.virtual import residual_draws
from .population import PopulationSpec, build_pymc_model, initial_values, random_effect_centres, record_sds


@dataclass(frozen=True)
class SBCResult:
    ranks: pd.DataFrame  # one row per replication, one column per population parameter
    summary: pd.DataFrame  # parameter, chi2, p_value, replicates
    n_draws: int  # posterior draws the ranks are taken among (rank in 0..n_draws)
    bins: int

    def plot(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cols = list(self.ranks.columns)
        ncol = min(4, len(cols))
        nrow = int(np.ceil(len(cols) / ncol))
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow), squeeze=False)
        expected = len(self.ranks) / self.bins
        band = stats.binom.interval(0.99, len(self.ranks), 1 / self.bins)
        for ax, col in zip(axes.ravel(), cols):
            ax.hist(self.ranks[col], bins=np.linspace(0, self.n_draws + 1, self.bins + 1), color="#4878a8",
                    edgecolor="white")
            ax.axhspan(band[0], band[1], color="grey", alpha=0.25, lw=0)
            ax.axhline(expected, color="black", lw=0.8)
            p = float(self.summary.set_index("parameter").loc[col, "p_value"])
            ax.set_title(f"{col} (p = {p:.2f})", fontsize=9)
            ax.set_yticks([])
        for ax in axes.ravel()[len(cols):]:
            ax.axis("off")
        fig.suptitle(f"SBC rank histograms, {len(self.ranks)} replicates (band: 99% for uniform ranks)",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return Path(path)


def sbc(model: Model | str, *, replicates: int = 100, subjects: int = 8, dose: str = "1e6/kg",
        chains: int = 2, draws: int = 200, tune: int = 200, thin_to: int = 99, bins: int = 10,
        seed: int = 0, progress=None) -> SBCResult:
    """Run SBC on a small design: `subjects` given one regimen (`dose`) on the model's default
    schedule; `replicates` simulate-and-fit replicates."""
    import nutpie

    if replicates < 2:
        raise ValueError(f"SBC needs at least 2 replicates (100 or more for a meaningful test), not {replicates}")
    model = load(model)
    spec = PopulationSpec.default(model)
    template = simulate(model, [dose], n=subjects, seed=seed)
    pm_model, pieces = build_pymc_model(spec, template)
    compiled = compile_model(pm_model)
    design, predictions, records = pieces["design"], pieces["predictions"], pieces["records"]
    estimated, iiv_cols = spec.estimated, [spec.estimated.index(n) for n in spec.iiv]
    residual_priors = [spec.residual_prior(a) for a in records["sigma_analytes"]] + \
        [spec.residual_prior(a, additive=True) for a in records["additive_analytes"]]
    scale = np.array([spec.omega_scale(n) for n in spec.iiv])
    priors = [spec.prior(n) for n in estimated]
    names = [f"typical_{n}" for n in estimated] + [f"omega_{n}" for n in spec.iiv] + \
        [f"sigma_{a}" for a in records["sigma_analytes"]] + [f"sigma_add_{a}" for a in records["additive_analytes"]]
    rows = []
    for r in range(replicates):
        rng = np.random.default_rng([seed, r])
        mu = np.array([rng.normal(np.log(p.median), p.sigma) for p in priors])
        omega = np.abs(rng.normal(0, scale))
        residual = np.exp([rng.normal(np.log(p.median), p.sigma) for p in residual_priors])
        log_theta = np.tile(mu, (len(template.subject_ids), 1))
        log_theta[:, iiv_cols] += rng.standard_normal((len(template.subject_ids), len(iiv_cols))) * omega
        pred, _ = predict_compiled(design, predictions.individual(np.exp(log_theta)), [], spec.steps)
        y, censored = _observe(model, records, pred, residual, rng)
        # as pkpd.fit does: individual fits of this replication's data centre the random effects
        data = _with_values(template, design.records, y, censored)
        individual = fit_individual(model, data, estimate=estimated, steps=Tolerances())
        centres = random_effect_centres(spec, pieces, initial_values(spec, individual)) if spec.iiv else {}
        trace = nutpie.sample(compiled.with_data(y_obs=y, censored_obs=censored, **centres), chains=chains,
                              draws=draws, tune=tune, seed=int(rng.integers(2**31)), progress_bar=False)
        post = trace["posterior"]
        truth = np.concatenate([mu, omega, np.log(residual)])
        stacked = lambda var: post[var].stack(s=("chain", "draw")).transpose("s", ...).to_numpy()
        samples = np.concatenate([stacked("mu"), stacked("omega") if spec.iiv else np.zeros((len(stacked("mu")), 0))]
                                 + [np.log(stacked(v)) for v in ("sigma", "sigma_add") if v in post], axis=1)
        keep = np.linspace(0, len(samples) - 1, thin_to).astype(int)  # thin: ranks need ~independent draws
        rows.append((samples[keep] < truth[None, :]).sum(axis=0))
        if progress is not None:
            progress(r + 1, replicates)
    ranks = pd.DataFrame(rows, columns=names)
    summary = []
    for col in names:
        counts = np.histogram(ranks[col], bins=np.linspace(0, thin_to + 1, bins + 1))[0]
        chi2, p = stats.chisquare(counts)
        summary.append({"parameter": col, "chi2": float(chi2), "p_value": float(p), "replicates": replicates})
    return SBCResult(ranks, pd.DataFrame(summary), thin_to, bins)


def _with_values(template, records, y, censored):
    """The template cohort with new values (and censoring flags) at its model records."""
    obs = template.observations.copy()
    obs.loc[records, "value"] = y
    obs.loc[records, "censored"] = censored
    return dataclasses.replace(template, observations=obs)


def _observe(model, records, pred, residual, rng):
    """Values with residual error (per the model's error models) and censoring at the LLOQ."""
    lloq = records["lloq"]
    sigma, additive = record_sds(records, residual)
    names = np.asarray(records["observed"])[records["slot"]]
    y = residual_draws(model, names, pred, rng, sigma={a: sigma for a in records["observed"]},
                       additive={a: additive for a in records["observed"]})
    below = y < lloq
    return np.where(below, lloq, y), below.astype(np.int64)
