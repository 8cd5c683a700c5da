"""Simulation-based calibration (Talts et al. 2018) of the population engine.

For each replication: draw population parameters from the prior, individual parameters from
them, and data on a small design (residual error, censoring below the LLOQ); fit; record the
rank of each true population parameter among the (thinned) posterior draws. If the engine is
calibrated, the ranks are uniform: a chi-square test per parameter and rank histograms show it.
The model is compiled once; each replication swaps in its data. With a checkpoint file the
ranks are written as replicates finish, so a killed run resumes where it stopped; a replicate
that exceeds its time cap is stopped and counted (dropping hard prior draws biases SBC, so the
count is reported beside the test).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..models import Model, load
from ..simulate import simulate
from ..simulate.compiled import Tolerances, predict_compiled
from .compile import compile_model
from .engine import population_build
from .individual import fit_individual
from ..simulate.virtual import residual_draws
from .population import PopulationSpec, build_pymc_model, initial_values, random_effect_centres, record_sds


@dataclass(frozen=True)
class SBCResult:
    ranks: pd.DataFrame  # one row per replication, one column per population parameter
    summary: pd.DataFrame  # parameter, chi2, p_value, replicates
    n_draws: int  # posterior draws the ranks are taken among (rank in 0..n_draws)
    bins: int
    timed_out: tuple[int, ...] = ()  # replicates stopped at their time cap (not in `ranks`)

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
        stopped = f"; {len(self.timed_out)} stopped at the time cap" if self.timed_out else ""
        fig.suptitle(f"SBC rank histograms, {len(self.ranks)} replicates{stopped} (band: 99% for uniform ranks)",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return Path(path)


def sbc(model: Model | str, *, replicates: int = 100, subjects: int = 8, dose: str = "1e6/kg",
        chains: int = 2, draws: int = 200, tune: int = 200, thin_to: int = 99, bins: int = 10,
        seed: int = 0, checkpoint: str | Path | None = None, replicate_seconds: float | None = None,
        progress=None) -> SBCResult:
    """Run SBC on a small design: `subjects` given one regimen (`dose`) on the model's default
    schedule; `replicates` simulate-and-fit replicates.

    `checkpoint`: a CSV file the ranks are appended to as replicates finish (with its settings in
    a JSON file beside it); an existing one with the same settings is resumed. `replicate_seconds`:
    stop a replicate's sampling after this long and record it as timed out."""
    if replicates < 2:
        raise ValueError(f"SBC needs at least 2 replicates (100 or more for a meaningful test), not {replicates}")
    if replicate_seconds is not None and replicate_seconds <= 0:
        raise ValueError(f"replicate_seconds must be positive (or None for no cap), not {replicate_seconds}")
    model = load(model)
    settings = {"model": model.name, "model_hash": model.hash, "subjects": subjects, "dose": dose,
                "chains": chains, "draws": draws, "tune": tune, "thin_to": thin_to, "seed": seed}
    done = _resume(checkpoint, settings) if checkpoint is not None else {}
    spec = PopulationSpec.default(model)
    template = simulate(model, [dose], n=subjects, seed=seed)
    pm_model, pieces = build_pymc_model(spec, template)
    compiled, _ = compile_model(pm_model, population_build(spec, template, None))
    design, predictions, records = pieces["design"], pieces["predictions"], pieces["records"]
    estimated, iiv_cols = spec.estimated, [spec.estimated.index(n) for n in spec.iiv]
    residual_priors = [spec.residual_prior(a) for a in records["sigma_analytes"]] + \
        [spec.residual_prior(a, additive=True) for a in records["additive_analytes"]]
    scale = np.array([spec.omega_scale(n) for n in spec.iiv])
    priors = [spec.prior(n) for n in estimated]
    names = [f"typical_{n}" for n in estimated] + [f"omega_{n}" for n in spec.iiv] + \
        [f"sigma_{a}" for a in records["sigma_analytes"]] + [f"sigma_add_{a}" for a in records["additive_analytes"]]
    rows, timed_out = {}, []
    for r in range(replicates):
        if r in done:
            status, ranks = done[r]
            if status == "ok":
                rows[r] = ranks
            else:
                timed_out.append(r)
            continue
        start = time.perf_counter()
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
        trace = _sample(compiled.with_data(y_obs=y, censored_obs=censored, **centres), replicate_seconds,
                        chains=chains, draws=draws, tune=tune, seed=int(rng.integers(2**31)))
        if trace is None:
            timed_out.append(r)
            _append(checkpoint, r, "timed out", time.perf_counter() - start, names, None)
            if progress is not None:
                progress(r + 1, replicates)
            continue
        post = trace["posterior"]
        truth = np.concatenate([mu, omega, np.log(residual)])
        stacked = lambda var: post[var].stack(s=("chain", "draw")).transpose("s", ...).to_numpy()
        samples = np.concatenate([stacked("mu"), stacked("omega") if spec.iiv else np.zeros((len(stacked("mu")), 0))]
                                 + [np.log(stacked(v)) for v in ("sigma", "sigma_add") if v in post], axis=1)
        keep = np.linspace(0, len(samples) - 1, thin_to).astype(int)  # thin: ranks need ~independent draws
        rows[r] = (samples[keep] < truth[None, :]).sum(axis=0)
        _append(checkpoint, r, "ok", time.perf_counter() - start, names, rows[r])
        if progress is not None:
            progress(r + 1, replicates)
    if len(rows) < 2:
        raise ValueError(f"only {len(rows)} of {replicates} SBC replicates finished within replicate_seconds="
                         f"{replicate_seconds}; raise the cap")
    ranks = pd.DataFrame([rows[r] for r in sorted(rows)], columns=names, index=pd.Index(sorted(rows), name="replicate"))
    summary = []
    for col in names:
        counts = np.histogram(ranks[col], bins=np.linspace(0, thin_to + 1, bins + 1))[0]
        chi2, p = stats.chisquare(counts)
        summary.append({"parameter": col, "chi2": float(chi2), "p_value": float(p), "replicates": len(ranks),
                        "timed_out": len(timed_out)})
    return SBCResult(ranks, pd.DataFrame(summary), thin_to, bins, tuple(timed_out))


def _sample(compiled, seconds, **options):
    """nutpie's draws, or None when sampling takes longer than `seconds`."""
    import nutpie

    if seconds is None:
        return nutpie.sample(compiled, progress_bar=False, **options)
    sampler = nutpie.sample(compiled, progress_bar=False, blocking=False, **options)
    try:
        return sampler.wait(timeout=seconds)
    except TimeoutError:
        sampler.cancel()
        return None


def _resume(checkpoint, settings) -> dict[int, tuple[str, np.ndarray | None]]:
    """Replicates already in `checkpoint` (status and ranks), after checking its settings match."""
    checkpoint = Path(checkpoint)
    sidecar = checkpoint.with_suffix(".json")
    if not checkpoint.exists():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
        return {}
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot resume the SBC checkpoint {checkpoint}: its settings file {sidecar} is "
                         f"unreadable ({exc}); remove both to start afresh") from None
    changed = sorted(k for k in settings if recorded.get(k) != settings[k])
    if changed:
        raise ValueError(f"the SBC checkpoint {checkpoint} was written with other settings ("
                         + ", ".join(f"{k}: {recorded.get(k)!r} there, {settings[k]!r} now" for k in changed)
                         + "); give another checkpoint or remove it to start afresh")
    table = pd.read_csv(checkpoint).drop_duplicates("replicate", keep="last")
    columns = [c for c in table.columns if c not in ("replicate", "status", "seconds")]
    # a line cut short by a killed run is not a finished replicate: it is fitted again
    complete = (table["status"] == "timed out") | ((table["status"] == "ok") & table[columns].notna().all(axis=1))
    table = table[complete]
    return {int(r): (status, ranks if status == "ok" else None)
            for r, status, ranks in zip(table["replicate"], table["status"], table[columns].to_numpy(dtype=float))}


def _append(checkpoint, replicate, status, seconds, names, ranks):
    """One finished replicate appended to the checkpoint (a line at a time: a killed run loses at
    most the replicate in progress)."""
    if checkpoint is None:
        return
    checkpoint = Path(checkpoint)
    new = not checkpoint.exists() or checkpoint.stat().st_size == 0
    values = [str(int(v)) for v in ranks] if ranks is not None else [""] * len(names)
    cut = not new and checkpoint.read_bytes()[-1:] != b"\n"  # a line cut short by a killed run
    with open(checkpoint, "a", encoding="utf-8") as f:
        if new:
            f.write(",".join(["replicate", "status", "seconds", *names]) + "\n")
        elif cut:
            f.write("\n")
        f.write(",".join([str(replicate), status, f"{seconds:.1f}", *values]) + "\n")


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
