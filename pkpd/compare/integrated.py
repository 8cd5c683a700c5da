"""Subject-level LOO with each subject's random effects integrated out.

Plain PSIS-LOO over posterior draws fails when the subject is the unit: a subject's
log-likelihood depends strongly on its own random effects, so leaving the subject out moves
them far from where the draws sit (Pareto k > 0.7 for most subjects). The remedy (integrated
importance sampling: Vehtari, Mononen, Tolvanen, Sivula and Winther, JMLR 2016; Merkle, Furr and
Rabe-Hesketh, Psychometrika 2019) computes, for each posterior draw s of the population
parameters, the subject's marginal likelihood

    L_is = integral p(y_i | phi, sigma_s) N(phi; mu_i(s), Omega_s) dphi

over its log individual parameters phi, and then runs PSIS over draws on log L_is.

The integral is estimated by importance sampling, per draw, from a defensive mixture of a multivariate t centred on the
subject's parameters in that draw (with the full covariance of its posterior draws) and the
draw's population distribution. Each estimate comes with its Monte Carlo standard error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from ..fit.likelihood import pointwise
from ..fit.op import Predictions
from ..fit.population import covariate_design, data_information, record_arrays, record_sds
from ..simulate.compiled import predict_compiled
from ..simulate.design import Design

INFLATION = 1.2   # of the Laplace scale: the centre is a posterior draw, not the conditional mode
DF = 4.0          # degrees of freedom of the posterior-fitted t component: heavier tails than the posterior
DEFENSIVE = 0.1   # weight of the population component, which bounds the importance weights


@dataclass(frozen=True)
class IntegratedLogLik:
    """log L_is for S posterior draws x N subjects, and the Monte Carlo SE of each estimate."""

    values: np.ndarray       # (S, N)
    mcse: np.ndarray         # (S, N), SE of each log L_is
    draw_index: np.ndarray   # (S,) positions in the flattened (chain, draw) sample
    subjects: list[str]


def integrated_subject_loglik(result, draws: int = 200, samples: int = 400, seed: int = 0) -> IntegratedLogLik:
    """log p(y_i | population parameters of draw s), the subject's random effects integrated out,
    for `draws` evenly spaced posterior draws and every subject, with `samples` importance samples
    per subject and draw (see `_proposal`)."""
    spec, cohort = _check(result)
    post, picks = _draws(result, draws)
    population, omega, residual = _population(spec, cohort, post, reference=cohort)
    iiv_index = _iiv_index(spec)
    log_theta = np.log(post["theta"].transpose("sample", "subject", "parameter").to_numpy())[..., iiv_index]
    rng = np.random.default_rng(seed)
    pieces = _pieces(spec, cohort)
    all_log_theta = np.log(post["theta"].transpose("sample", "subject", "parameter").to_numpy())

    def proposal(row):
        s = picks[row]
        # the subject's conditional posterior given this draw's population parameters, by Laplace:
        # precision = Gauss-Newton information of its data + the population precision
        information = data_information(spec, pieces, all_log_theta[s], residual[s])
        precision = information + np.diag(1.0 / omega[s] ** 2)[None]
        chol = np.linalg.cholesky(np.linalg.inv(precision)) * INFLATION
        return _proposal(log_theta[s], chol, population[s][:, iiv_index], omega[s], samples, rng)

    values, mcse = _integrate(spec, pieces, population[picks], omega[picks], residual[picks], proposal)
    return IntegratedLogLik(values, mcse, picks, list(cohort.subject_ids))


def heldout_subject_loglik(result, cohort, draws: int = 400, samples: int = 2000, seed: int = 0,
                           pilot_draws: int = 20) -> IntegratedLogLik:
    """log p(y_i | population parameters of draw s) for subjects of `cohort` that `result` was not
    fitted to (an exact leave-one-out or K-fold refit), covariates referred to the fitted cohort.

    The population distribution alone is a poor proposal for a subject with rich data (its
    likelihood is much narrower), so the proposal adapts: a pilot pass samples the population
    distribution over `pilot_draws` draws and locates the subject's posterior (the importance-
    weighted mean of its log parameters); the main pass then samples, per draw, the defensive
    mixture of `integrated_subject_loglik`: a t centred there with the Laplace covariance of the
    subject's conditional posterior, and the draw's population distribution."""
    spec, _ = _check(result)
    post, picks = _draws(result, draws)
    population, omega, residual = _population(spec, cohort, post, reference=result.cohort)
    iiv_index = _iiv_index(spec)
    rng = np.random.default_rng(seed)
    pieces = _pieces(spec, cohort)
    mean = population[..., iiv_index].mean(0)
    sd = np.sqrt((omega ** 2).mean(0)[None, :] + population[..., iiv_index].var(0))
    pilot = picks[np.unique(np.linspace(0, len(picks) - 1, min(pilot_draws, len(picks))).round().astype(int))]
    phi = mean + sd * rng.standard_normal((samples, *mean.shape))
    log_q = _log_normal(phi, mean, sd)
    log_w = np.concatenate([_log_weights(spec, pieces, population[s], omega[s], residual[s], phi, log_q)
                            for s in pilot])                                          # (P M, N)
    w = np.exp(log_w - log_w.max(0))
    w /= w.sum(0)
    centre = np.einsum("mn,mnq->nq", w, np.tile(phi, (len(pilot), 1, 1)))             # (N, Q)
    typical = np.median(population, axis=0)                                             # (N, K)
    typical[:, iiv_index] = centre
    information = data_information(spec, pieces, typical, np.median(residual, axis=0))
    precision = information + np.diag(1.0 / np.median(omega, axis=0) ** 2)[None]
    chol = np.linalg.cholesky(np.linalg.inv(precision)) * INFLATION
    values, mcse = _integrate(spec, pieces, population[picks], omega[picks], residual[picks],
                              lambda row: _proposal(centre, chol, population[picks[row]][:, iiv_index],
                                                    omega[picks[row]], samples, rng))
    return IntegratedLogLik(values, mcse, picks, list(cohort.subject_ids))


def _check(result):
    spec = result.spec
    if spec.correlated and len(spec.iiv) > 1:
        raise ValueError("integrated LOO needs independent random effects; this fit estimated their correlation")
    if not spec.iiv:
        raise ValueError("the fit has no random effects to integrate out")
    return spec, result.cohort


def _draws(result, draws: int):
    post = result.tree["posterior"].to_dataset().stack(sample=("chain", "draw"))
    total = post.sizes["sample"]
    return post, np.unique(np.linspace(0, total - 1, min(draws, total)).round().astype(int))


def _iiv_index(spec) -> np.ndarray:
    return np.array([list(spec.estimated).index(n) for n in spec.iiv])


def _population(spec, cohort, post, reference):
    """Per draw: the mean of each subject's log parameters (S, N, K), omega (S, Q), the residual
    vector (S, R)."""
    mu = post["mu"].transpose("sample", "parameter").to_numpy()
    X, labels, owners = covariate_design(spec, cohort, reference)
    means = np.repeat(mu[:, None, :], len(cohort.subject_ids), axis=1)
    if labels:
        beta = post["beta"].transpose("sample", "covariate_effect").to_numpy()
        for column, owner in enumerate(owners):
            means[:, :, owner] += beta[:, column][:, None] * X[None, :, column]
    omega = post["omega"].transpose("sample", "iiv_parameter").to_numpy()
    parts = [post[var].transpose("sample", dim).to_numpy()
             for var, dim in (("sigma", "analyte"), ("sigma_add", "additive_analyte")) if var in post]
    return means, omega, np.concatenate(parts, axis=-1)


def _pieces(spec, cohort) -> dict:
    """The design, record arrays and prediction function of `cohort` (as the fit builds them)."""
    design = Design(spec.model, cohort)
    records = record_arrays(spec, design)
    fixed = np.tile([p.typical for p in spec.model.parameters], (len(cohort.subject_ids), 1))
    return {"design": design, "records": records, "copies": {},
            "predictions": Predictions(design, list(spec.estimated), fixed, spec.steps)}


def _copies(spec, pieces, samples: int) -> tuple[Predictions, dict]:
    """Predictions and record arrays of `samples` copies of the cohort (kept in `pieces`): the
    importance samples of one draw are predicted in one solver call."""
    if samples not in pieces["copies"]:
        one = pieces["predictions"]
        predictions = Predictions(one.design.repeated(samples), one.estimated, np.tile(one.fixed, (samples, 1)),
                                  spec.steps)
        records = {name: np.tile(pieces["records"][name], samples) for name in ("value", "lloq", "censored", "error")}
        pieces["copies"][samples] = predictions, records
    return pieces["copies"][samples]


def _integrate(spec, pieces, population, omega, residual, proposal) -> tuple[np.ndarray, np.ndarray]:
    """log of the importance-sampling estimate of each subject's marginal likelihood, per draw,
    and its SE. population (S, N, K), omega (S, Q), residual (S, R); proposal(row) gives the
    samples phi (M, N, Q) for that draw and their log proposal densities (M, N)."""
    N = population.shape[1]
    values = np.empty((population.shape[0], N))
    mcse = np.empty_like(values)
    for row in range(population.shape[0]):
        phi, log_q = proposal(row)
        log_w = _log_weights(spec, pieces, population[row], omega[row], residual[row], phi, log_q)
        values[row] = logsumexp(log_w, axis=0) - np.log(phi.shape[0])
        mcse[row] = _log_mean_se(log_w)
    return values, mcse


def _log_weights(spec, pieces, population, omega, residual, phi, log_q) -> np.ndarray:
    """(M, N) log importance weights log p(y_i | phi) + log N(phi; population, omega) - log q of
    the samples phi (M, N, Q) for one draw: population (N, K), omega (Q,), residual (R,)."""
    M, N, Q = phi.shape
    copies, records = _copies(spec, pieces, M)
    iiv_index = _iiv_index(spec)
    sigma, additive = record_sds(pieces["records"], residual)
    log_prior = _log_normal(phi, population[:, iiv_index][None], omega[None, None])  # (M, N)
    theta = np.tile(np.exp(population), (M, 1))                                       # (M N, K)
    theta[:, iiv_index] = np.exp(phi.reshape(M * N, Q))
    pred, _ = predict_compiled(copies.design, copies.individual(theta), [], spec.steps)
    terms = pointwise(pred, records["value"], records["lloq"], records["censored"], records["error"],
                      np.tile(sigma, M), np.tile(additive, M), m4=spec.censoring == "M4")
    log_lik = np.bincount(copies.design.subject_index, weights=terms, minlength=M * N).reshape(M, N)
    return log_lik + log_prior - log_q


def _log_normal(x, mean, sd) -> np.ndarray:
    """Sum over the last axis of log N(x; mean, sd)."""
    z = (x - mean) / sd
    return np.sum(-0.5 * z * z - np.log(sd) - 0.5 * np.log(2 * np.pi), axis=-1)


def _proposal(centre, chol, pop_mean, omega, samples: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Draws from each subject's proposal for one posterior draw, and their log densities.

    The main component (weight 1 - DEFENSIVE) is a multivariate t (DF degrees of freedom)
    centred on the subject's own parameters in that draw, with the full covariance of its
    posterior draws (individual parameters are correlated, cmax with tmax: a diagonal proposal in
    four or more dimensions leaves a few samples carrying all the weight); the defensive
    component is the draw's population distribution, which bounds the weights.

    centre: (N, Q) the subject's log parameters in the draw; chol: (N, Q, Q); pop_mean (N, Q)
    and omega (Q,): the draw's population distribution."""
    N, Q = centre.shape
    main = int(round(samples * (1 - DEFENSIVE)))
    z = rng.standard_normal((samples, N, Q))
    scale = np.sqrt(DF / rng.chisquare(DF, size=(main, N, 1)))
    t_draws = centre + np.einsum("nij,mnj->mni", chol, z[:main]) * scale
    phi = np.concatenate([t_draws, pop_mean + omega * z[main:]], axis=0)
    log_q = np.logaddexp(np.log(1 - DEFENSIVE) + _log_t(phi, centre, chol),
                         np.log(DEFENSIVE) + _log_normal(phi, pop_mean, omega))
    return phi, log_q


def _log_t(x, mean, chol) -> np.ndarray:
    """log density of a multivariate t (DF) with location `mean` (N, Q) and scale chol (N, Q, Q)."""
    from scipy.special import gammaln

    Q = mean.shape[-1]
    solved = np.linalg.solve(chol[None], (x - mean[None])[..., None])[..., 0]          # (M, N, Q)
    maha = np.sum(solved ** 2, axis=-1)
    log_det = np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)[None]     # (1, N)
    return (gammaln((DF + Q) / 2) - gammaln(DF / 2) - 0.5 * Q * np.log(DF * np.pi) - log_det
            - 0.5 * (DF + Q) * np.log1p(maha / DF))


def _log_mean_se(log_w: np.ndarray) -> np.ndarray:
    """SE of log(mean(w)) over the first axis (delta method), per column."""
    top = log_w.max(0)
    w = np.exp(log_w - top)
    mean = w.mean(0)
    return np.sqrt(w.var(0, ddof=1) / w.shape[0]) / mean


def integrated_loo(result, draws: int = 200, samples: int = 400, seed: int = 0):
    """PSIS-LOO with the subject as the unit, each subject's random effects integrated out:
    arviz's ELPDData (elpd_i and pareto_k per subject) and the IntegratedLogLik it was computed from."""
    integrated = integrated_subject_loglik(result, draws, samples, seed)
    return loo_of(result.tree, integrated), integrated


def loo_of(tree, integrated: IntegratedLogLik):
    """arviz's PSIS-LOO over the draws of `integrated` (the posterior `tree` supplies the draws)."""
    import warnings

    import arviz as az
    import xarray as xr

    post = tree["posterior"].to_dataset().stack(sample=("chain", "draw")).isel(sample=integrated.draw_index)
    post = post.drop_vars(["sample", "chain", "draw"]).rename({"sample": "draw"}).expand_dims(chain=[0])
    log_lik = xr.Dataset({"y_subject": (("chain", "draw", "subject"), integrated.values[None])},
                         coords={"chain": [0], "draw": np.arange(len(integrated.draw_index)),
                                 "subject": integrated.subjects})
    small = xr.DataTree.from_dict({"posterior": post[["mu"]].assign_coords(draw=np.arange(post.sizes["draw"])),
                                   "log_likelihood": log_lik})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.loo(small, var_name="y_subject", pointwise=True)


def save(integrated: IntegratedLogLik, path) -> None:
    """Write `integrated` (npz, atomically): a comparison's leaderboard reads it back instead of
    integrating again."""
    from .._files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, values=integrated.values, mcse=integrated.mcse, draw_index=integrated.draw_index,
                     subjects=np.asarray(integrated.subjects, dtype=str))


def load(path) -> IntegratedLogLik | None:
    """What `save` wrote, or None when the file is missing or damaged."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return IntegratedLogLik(data["values"], data["mcse"], data["draw_index"], [str(s) for s in data["subjects"]])
    except (OSError, ValueError, KeyError):
        return None
