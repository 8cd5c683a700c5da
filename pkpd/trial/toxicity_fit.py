"""Fitting a toxicity model to adverse-event records: the worst grade of each subject against the
exposure signal measured on the subject's own samples (its NCA metric), by a Bayesian ordered
logistic regression (PyMC's OrderedLogistic, sampled with nutpie) under the model's priors.

The signal is the measured one (the trial's schedule, assay error, censoring) because that is the
signal the trial simulator gives each virtual patient: the fitted relation is used on the scale it
was estimated on. Subjects without a graded record of the event were not assessed and are left
out (with a note); a record of grade 0 says the subject was assessed without the event.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from ..fit.compile import compile_model
from .toxicity import ToxicityModel

MIN_SUBJECTS = 10


def toxicity_data(toxicity: ToxicityModel, cohort) -> tuple[pd.DataFrame, list[str]]:
    """(per subject: worst grade and signal; notes on the subjects left out). Empty when the
    cohort has no records of toxicity.records."""
    from ..nca import nca

    obs = cohort.observations
    events = obs[(obs["analyte"] == toxicity.records) & ~obs["mdv"]]
    if events.empty:
        return pd.DataFrame(columns=["subject", "grade", "signal"]), []
    worst = events.groupby("subject", sort=False)["value"].max()
    notes = []
    if toxicity.analyte not in cohort.analytes:
        raise ValueError(f"the cohort has {toxicity.records} records but no {toxicity.analyte} samples to "
                         f"measure the toxicity signal ({toxicity.analyte} {toxicity.metric}) on")
    table = nca(cohort, [toxicity.analyte]).set_index("subject")
    if toxicity.metric not in table:
        raise ValueError(f"{toxicity.metric} is not an NCA metric of {toxicity.analyte} "
                         f"({', '.join(c for c in table.columns if c not in ('analyte', 'unit'))})")
    signal = table[toxicity.metric].reindex(worst.index)
    missing = signal.index[signal.isna()].tolist()
    if missing:
        notes.append(f"{len(missing)} subject(s) with {toxicity.records} records but no {toxicity.analyte} "
                     f"{toxicity.metric} left out: {', '.join(map(str, missing[:10]))}")
    unassessed = sorted(set(cohort.subject_ids) - set(worst.index))
    if unassessed:
        notes.append(f"{len(unassessed)} subject(s) without any {toxicity.records} record (not assessed) left out")
    data = pd.DataFrame({"subject": worst.index, "grade": worst.to_numpy().astype(int),
                         "signal": signal.to_numpy(float)})
    return data[data["signal"].notna()].reset_index(drop=True), notes


def ordered_logistic(means: np.ndarray, sds: np.ndarray, slope: tuple[float, float], x: np.ndarray,
                     grade: np.ndarray):
    """The PyMC model: P(grade >= g) = logistic(slope x + a_g) = logistic(eta - c_{g-1}) with
    increasing cutpoints c = -a, priors Normal(means, sds) on a and Normal(*slope) on the slope.
    The signals and grades are data, not constants of the compiled code, so that the same
    toxicity model fitted to other adverse-event records loads its sampler from the cache."""
    import pymc as pm

    with pm.Model() as model:
        signal = pm.Data("signal", np.asarray(x, dtype=float))
        observed = pm.Data("grade_observed", np.asarray(grade, dtype="int64"))
        cutpoints = pm.Normal("cutpoints", mu=-means, sigma=sds, shape=len(means),
                              transform=pm.distributions.transforms.ordered, initval=-means)
        slope_ = pm.Normal("slope", mu=slope[0], sigma=slope[1])
        # compute_p=False: no per-subject probabilities among the draws (they would also size the
        # sampler's output by the number of subjects, and so its compiled entry points)
        pm.OrderedLogistic("grade", eta=slope_ * signal, cutpoints=cutpoints, observed=observed, compute_p=False)
    return model


def fit_toxicity(toxicity: ToxicityModel, cohort, *, draws: int = 1000, tune: int = 1000, chains: int = 4,
                 seed: int = 0) -> ToxicityModel:
    """The toxicity model with its grade intercepts and slope fitted to the cohort's
    adverse-event records (posterior draws kept; the background DLT probability stays at its
    prior: it needs DLT records of other causes). ValueError when there are too few subjects."""
    import arviz as az
    import nutpie

    data, notes = toxicity_data(toxicity, cohort)
    if len(data) < MIN_SUBJECTS:
        raise ValueError(f"{len(data)} subject(s) with graded {toxicity.records} records and a {toxicity.analyte} "
                         f"{toxicity.metric}: at least {MIN_SUBJECTS} are needed to fit the toxicity model; "
                         "the priors are used otherwise")
    G = len(toxicity.intercepts)
    means = np.array([m for m, _ in toxicity.intercepts])
    sds = np.array([sd for _, sd in toxicity.intercepts])
    x = np.log10(np.maximum(data["signal"].to_numpy(), toxicity.reference / 100) / toxicity.reference)
    grade = np.minimum(data["grade"].to_numpy(), G)      # the top grade threshold takes every grade above it
    arguments = (means, sds, tuple(toxicity.slope), x, grade)
    compiled, _ = compile_model(ordered_logistic(*arguments), (ordered_logistic, arguments))
    tree = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed, cores=1, progress_bar=False)
    post = tree["posterior"].to_dataset() if hasattr(tree, "children") else tree.posterior
    cut = post["cutpoints"].transpose("chain", "draw", ...).to_numpy()
    slope_draws = post["slope"].transpose("chain", "draw").to_numpy()
    r_hat = max([float(az.rhat(cut[..., g])) for g in range(G)] + [float(az.rhat(slope_draws))])
    ess = min([float(az.ess(cut[..., g], method="bulk")) for g in range(G)] + [float(az.ess(slope_draws, method="bulk"))])
    stats = tree["sample_stats"].to_dataset() if hasattr(tree, "children") else tree.sample_stats
    divergences = int(stats["diverging"].sum()) if "diverging" in stats else 0
    counts = np.bincount(grade, minlength=G + 1)
    summary = (f"fitted to {len(data)} subjects' worst {toxicity.records} grades (grade 0-{G}: "
               f"{', '.join(str(int(c)) for c in counts)}); slope median {np.median(slope_draws):.2f}; "
               f"R-hat {r_hat:.3f}, bulk ESS {ess:.0f}, {divergences} divergences"
               + (f"; {'; '.join(notes)}" if notes else ""))
    return replace(toxicity, fitted=True, summary=summary,
                   posterior={"intercepts": -cut.reshape(-1, G), "slope": slope_draws.reshape(-1)},
                   converged=bool(r_hat <= 1.01 and ess >= 400 and divergences == 0))
