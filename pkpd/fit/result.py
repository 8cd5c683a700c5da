"""The result of a population fit: a complete value, as lmfit's ModelResult is.

A FitResult holds the model (with the text of the files it came from), the population
specification, the cohort it was fitted to and the posterior as an xarray DataTree (posterior,
sample_stats, observed_data, constant_data, log_likelihood; provenance in `tree.attrs`). It
reports itself (`parameter_table`, `diagnostics`, `converged`), and every later step takes it
(posterior predictive checks, dose selection, the report, comparisons). `save(folder)` writes a
self-contained run folder and `FitResult.load(folder)` reads it back anywhere, rebuilding the
model from the source recorded at fit time (pkpd.fit.run).

Diagnostics are computed once per result; `converged` is the one definition of a fit that
passed them all, used by the fit, the comparison and the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from ..simulate.reduction import ReductionCheck

if TYPE_CHECKING:
    from ..data.cohort import Cohort
    from ..models import Model
    from .population import PopulationSpec

RHAT_MAX = 1.01
ESS_MIN = 400
BFMI_MIN = 0.3


@dataclass(frozen=True)
class Diagnostic:
    """One check of a fit; a failed `warning` is reported but does not make the fit unconverged."""

    name: str
    ok: bool
    message: str
    warning: bool = False


@dataclass(frozen=True, eq=False)
class FitResult:
    """A population fit: model, specification, cohort and posterior DataTree."""

    tree: xr.DataTree
    model: "Model"
    spec: "PopulationSpec"
    cohort: "Cohort"

    # --- persistence -----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the run folder: posterior.nc, data.csv, parameters.csv, diagnostics.json and
        the model's source files (every file atomically; posterior.nc last)."""
        from .run import save_run

        return save_run(self, folder)

    @classmethod
    def load(cls, folder: str | Path, model: "Model | None" = None) -> "FitResult":
        """Read a run folder written by `save` (RunError names what is wrong). The model is
        rebuilt from the source recorded at fit time (loading runs that code), or `model` is
        used after checking that it is the fitted one."""
        from .run import load_run

        return load_run(folder, model)

    # --- views -----------------------------------------------------------------------------
    @property
    def posterior(self) -> xr.Dataset:
        return self.tree["posterior"].to_dataset()

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def analytes(self) -> list[str]:
        """The fitted analytes, in the order of the likelihood's records."""
        return json.loads(self.tree.attrs["analytes"])

    def residual_draws(self) -> dict[str, dict[str, np.ndarray]]:
        """{analyte: {'sigma': draws, 'additive': draws}} with the chains stacked (each key
        present when the analyte's error model has that part)."""
        post = self.posterior
        out: dict[str, dict[str, np.ndarray]] = {a: {} for a in self.analytes}
        for var, dim, key in (("sigma", "analyte", "sigma"), ("sigma_add", "additive_analyte", "additive")):
            if var in post:
                stacked = post[var].stack(sample=("chain", "draw")).transpose(dim, "sample")
                for a in stacked[dim].values:
                    out[str(a)][key] = stacked.sel({dim: a}).to_numpy()
        return out

    def steps_per_draw(self) -> float:
        return float(self.tree["sample_stats"]["n_steps"].mean())

    def divergences(self) -> int:
        return int(self.tree["sample_stats"]["diverging"].sum())

    def bfmi(self) -> np.ndarray:
        energy = self.tree["sample_stats"]["energy"].transpose("chain", "draw").to_numpy()
        return np.square(np.diff(energy, axis=1)).mean(axis=1) / energy.var(axis=1)

    def min_ess_bulk(self) -> float:
        return float(self.parameter_table()["ess_bulk"].min())

    def parameter_table(self, ci_prob: float = 0.95) -> pd.DataFrame:
        """Typical values, variability (as CV%, with eta-shrinkage), covariate effects and
        residual errors: posterior median, `ci_prob` interval, R-hat, bulk and tail ESS."""
        post = self.posterior
        lo, hi = (1 - ci_prob) / 2, 1 - (1 - ci_prob) / 2
        rhat, ess_b, ess_t = self._convergence_statistics
        rows = []

        def add(kind, name, draws, diag_key, unit="", **extra):
            values = draws.to_numpy().ravel()
            rows.append({"kind": kind, "name": name, "unit": unit, "median": float(np.median(values)),
                         "lower": float(np.quantile(values, lo)), "upper": float(np.quantile(values, hi)),
                         **extra, "r_hat": rhat.get(diag_key, np.nan), "ess_bulk": ess_b.get(diag_key, np.nan),
                         "ess_tail": ess_t.get(diag_key, np.nan)})

        units = {p.name: p.unit for p in self.model.parameters}
        for name in post["parameter"].values:
            add("typical", str(name), post["typical"].sel(parameter=name), ("mu", str(name)), units.get(str(name), ""))
        if "omega" in post:
            shrink = self.shrinkage
            for name in post["iiv_parameter"].values:
                omega = post["omega"].sel(iiv_parameter=name)
                cv = 100 * np.sqrt(np.expm1(np.square(omega)))
                add("iiv", f"omega_{name}", omega, ("omega", str(name)), "SD(log)",
                    cv_percent=float(np.median(cv)), shrinkage_percent=float(100 * shrink[str(name)]))
        if "beta" in post:
            for name in post["covariate_effect"].values:
                add("covariate", str(name), post["beta"].sel(covariate_effect=name), ("beta", str(name)))
        observations = self.model.observations
        if "sigma" in post:
            for name in post["analyte"].values:
                error = observations[str(name)].error
                add("residual", f"sigma_{name}", post["sigma"].sel(analyte=name), ("sigma", str(name)),
                    "SD(log)" if error == "log" else "fraction")
        if "sigma_add" in post:
            for name in post["additive_analyte"].values:
                add("residual", f"sigma_add_{name}", post["sigma_add"].sel(additive_analyte=name),
                    ("sigma_add", str(name)), observations[str(name)].unit)
        return pd.DataFrame(rows)

    @cached_property
    def shrinkage(self) -> dict[str, float]:
        """Eta-shrinkage per parameter with variability: 1 - SD(posterior-mean eta) / omega."""
        post = self.posterior
        constant = self.tree["constant_data"].to_dataset()
        out = {}
        log_theta = np.log(post["theta"])
        mu = post["mu"]
        labels = [str(v) for v in post["covariate_effect"].values] if "beta" in post else []
        for name in post["iiv_parameter"].values:
            # eta = log theta - mu - covariate effects of this parameter
            shift = sum(constant["covariate_matrix"].isel(covariate_effect=c) * post["beta"].isel(covariate_effect=c)
                        for c, label in enumerate(labels) if label.split("~")[0] == str(name))
            eta = log_theta.sel(parameter=name) - mu.sel(parameter=name) - shift
            mean_eta = eta.mean(("chain", "draw"))
            omega = float(post["omega"].sel(iiv_parameter=name).mean())
            out[str(name)] = float(1 - mean_eta.std() / omega) if omega > 0 else np.nan
        return out

    @cached_property
    def _convergence_statistics(self) -> tuple[dict, dict, dict]:
        """R-hat, bulk ESS and tail ESS keyed by (variable, coordinate), computed once."""
        import arviz as az

        post = self.posterior
        rhat, ess_b, ess_t = {}, {}, {}
        for var, dim in (("mu", "parameter"), ("omega", "iiv_parameter"), ("beta", "covariate_effect"),
                         ("sigma", "analyte"), ("sigma_add", "additive_analyte")):
            if var not in post:
                continue
            for coord in post[dim].values:
                x = post[var].sel({dim: coord}).transpose("chain", "draw").to_numpy()
                rhat[(var, str(coord))] = float(az.rhat(x))
                ess_b[(var, str(coord))] = float(az.ess(x, method="bulk"))
                ess_t[(var, str(coord))] = float(az.ess(x, method="tail", prob=0.05))
        return rhat, ess_b, ess_t

    @cached_property
    def _diagnostics(self) -> tuple[Diagnostic, ...]:
        table = self.parameter_table()
        out = []
        worst_rhat = table.loc[table["r_hat"].idxmax()] if table["r_hat"].notna().any() else None
        if worst_rhat is not None:
            ok = worst_rhat["r_hat"] <= RHAT_MAX
            out.append(Diagnostic("r_hat", bool(ok), f"max R-hat {worst_rhat['r_hat']:.3f} ({worst_rhat['name']})"
                                  + ("" if ok else f" > {RHAT_MAX}: chains disagree; run longer or reparameterise")))
        low = table.loc[table["ess_bulk"].idxmin()]
        ok = low["ess_bulk"] >= ESS_MIN and table["ess_tail"].min() >= ESS_MIN
        out.append(Diagnostic("ess", bool(ok), f"min bulk ESS {low['ess_bulk']:.0f} ({low['name']}), min tail ESS "
                              f"{table['ess_tail'].min():.0f}" + ("" if ok else f" < {ESS_MIN}: draw more")))
        n_div = self.divergences()
        out.append(Diagnostic("divergences", n_div == 0, f"{n_div} divergent transition(s)"
                              + ("" if n_div == 0 else ": the posterior is not explored reliably; raise "
                                 "target_accept or reparameterise")))
        bfmi = self.bfmi()
        ok = bool(np.all(bfmi >= BFMI_MIN))
        out.append(Diagnostic("bfmi", ok, f"min BFMI {bfmi.min():.2f}" + ("" if ok else f" < {BFMI_MIN}: poor "
                                                                          "energy exploration")))
        err, tol = self.tree.attrs.get("solver_max_log_error"), self.tree.attrs.get("solver_tolerance")
        if err is not None:
            ok = float(err) <= float(tol)
            out.append(Diagnostic("solver", ok, f"compiled solver vs LSODA at posterior draws: max |log error| "
                                  f"{float(err):.1e} (tolerance {float(tol):.1e})" + ("" if ok else
                                  ": use tighter tolerances (steps=Tolerances(rtol=1e-6))")))
        reduction = self.tree.attrs.get("reduction_check")
        if reduction:  # a modelling approximation, not a failure of the sampler: a warning
            check = ReductionCheck(**json.loads(reduction))
            out.append(Diagnostic("reduction", check.ok, check.message(), warning=True))
        modes = json.loads(self.tree.attrs.get("individual_modes", "{}"))
        if modes:
            example = next(iter(modes.items()))
            out.append(Diagnostic("modes", False, f"{len(modes)} subject(s) fit as well at another optimum "
                                  f"(e.g. subject {example[0]}: {example[1]}): their data do not tell the modes "
                                  "apart and the chains explore the one they start in; if the whole population can "
                                  "sit in either (flip-flop absorption: ka against CL/V), constrain the model "
                                  "(ka = ke + delta) or give informative priors", warning=True))
        return tuple(out)

    def diagnostics(self) -> list[Diagnostic]:
        """R-hat, ESS, divergences, BFMI, solver accuracy, a quasi-steady-state reduction's error
        and modes, each with a clear message."""
        return list(self._diagnostics)

    @property
    def converged(self) -> bool:
        """Every diagnostic passed (warnings aside): the one definition the fit, comparisons and
        reports use."""
        return all(d.ok for d in self._diagnostics if not d.warning)

    def __repr__(self) -> str:
        post = self.posterior
        return (f"FitResult(model={self.model.name!r}, subjects={len(self.cohort.subjects)}, "
                f"chains={post.sizes['chain']}, draws={post.sizes['draw']}, converged={self.converged})")
