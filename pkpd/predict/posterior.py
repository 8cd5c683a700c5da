"""Posterior draws of a population fit, turned into parameters of observed and of new subjects.

For a new subject with covariate row x and a posterior draw s:
    log theta = mu_s + (x * beta_s) @ owner + eta,   eta ~ N(0, diag(omega_s) R_s diag(omega_s))
(R_s the identity unless the fit had correlated random effects), then residual error with
sigma_s. So simulations carry parameter uncertainty, inter-individual variability and residual
error, the three sources a posterior-predictive check and a dose selection need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.cohort import Cohort
from ..fit.population import covariate_design
from ..fit.result import FitResult
from ..simulate.compiled import Design, Tolerances, predict_compiled


def _stacked(post, name: str, *dims: str) -> np.ndarray:
    return post[name].stack(sample=("chain", "draw")).transpose("sample", *dims).to_numpy()


@dataclass(frozen=True)
class PosteriorDraws:
    """The population posterior as arrays over S draws (chains stacked)."""

    result: FitResult
    mu: np.ndarray               # (S, K) log typical values of the estimated parameters
    beta: np.ndarray             # (S, C) covariate effects
    omega: np.ndarray            # (S, Q) SD of the random effects
    corr: np.ndarray | None      # (S, Q, Q) correlation of the random effects, or None
    residual: dict               # analyte -> {'sigma': (S,), 'additive': (S,)} residual SDs
    theta: np.ndarray            # (S, N, K) individual values of the fitted subjects
    analytes: list[str]          # fitted analytes
    owner: np.ndarray            # (C, K) which parameter each covariate column acts on

    @classmethod
    def from_result(cls, result: FitResult) -> "PosteriorDraws":
        post = result.posterior
        spec = result.spec
        K, Q = len(spec.estimated), len(spec.iiv)
        S = post.sizes["chain"] * post.sizes["draw"]
        _, labels, owners = covariate_design(spec, result.cohort)
        owner = np.zeros((len(labels), K))
        owner[np.arange(len(labels)), owners] = 1.0
        beta = _stacked(post, "beta", "covariate_effect") if "beta" in post else np.zeros((S, 0))
        omega = _stacked(post, "omega", "iiv_parameter") if Q else np.zeros((S, 0))
        corr = _stacked(post, "chol_corr", "chol_corr_dim_0", "chol_corr_dim_1") \
            if "chol_corr" in post and Q > 1 else None
        return cls(result, _stacked(post, "mu", "parameter"), beta, omega, corr, result.residual_draws(),
                   _stacked(post, "theta", "subject", "parameter"), result.analytes, owner)

    @property
    def n_draws(self) -> int:
        return self.mu.shape[0]

    def pick(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draw indices: a random subset, or draws with replacement when n exceeds S."""
        return np.sort(rng.choice(self.n_draws, n, replace=n > self.n_draws))

    def covariates(self, cohort: Cohort) -> np.ndarray:
        """Covariate rows of `cohort`'s subjects, with the fitted cohort's reference levels."""
        X, _, _ = covariate_design(self.result.spec, cohort, reference=self.result.cohort)
        return X

    def typical_log(self, draws: np.ndarray, X: np.ndarray) -> np.ndarray:
        """(M, K) log typical values with covariate effects for subject rows X at draws (M,)."""
        return self.mu[draws] + (X * self.beta[draws]) @ self.owner

    def point_typical_log(self, X: np.ndarray) -> np.ndarray:
        """(M, K) log typical values at the posterior medians of mu and beta (for PRED)."""
        return np.median(self.mu, axis=0)[None, :] + (X * np.median(self.beta, axis=0)) @ self.owner

    def new_subjects(self, draws: np.ndarray, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(M, K) log parameters of new subjects: one random effect vector per row."""
        log_theta = self.typical_log(draws, X)
        Q = self.omega.shape[1]
        if Q:
            z = rng.standard_normal((len(draws), Q))
            if self.corr is not None:
                cov = self.corr[draws] * self.omega[draws][:, :, None] * self.omega[draws][:, None, :]
                eta = np.einsum("mij,mj->mi", np.linalg.cholesky(cov), z)
            else:
                eta = z * self.omega[draws]
            cols = [self.result.spec.estimated.index(n) for n in self.result.spec.iiv]
            log_theta[:, cols] += eta
        return log_theta

    def parameter_matrix(self, log_theta: np.ndarray) -> np.ndarray:
        """(M, n_parameters) full parameter rows: estimated ones from log_theta, others typical."""
        model, spec = self.result.model, self.result.spec
        P = np.tile([p.typical for p in model.parameters], (log_theta.shape[0], 1))
        P[:, [model.parameter_names.index(n) for n in spec.estimated]] = np.exp(log_theta)
        return P

    def residual_of(self, draws: int | np.ndarray) -> tuple[dict, dict]:
        """({analyte: log-scale/proportional SD}, {analyte: additive SD}) at the draw (or at each
        of the draws), for `residual_draws`."""
        sigma = {a: parts["sigma"][draws] for a, parts in self.residual.items() if "sigma" in parts}
        additive = {a: parts["additive"][draws] for a, parts in self.residual.items() if "additive" in parts}
        return sigma, additive


def predictions(result: FitResult, design: Design, P: np.ndarray, steps: Tolerances | None = None) -> np.ndarray:
    """Predictions at the design's records for parameter rows P (one row per design subject),
    solved with `steps` (default: the fit's tolerances)."""
    pred, _ = predict_compiled(design, P, [], steps or result.spec.steps)
    return pred

