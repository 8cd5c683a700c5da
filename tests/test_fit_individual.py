"""Individual fits with lmfit: recovery from noiseless simulations, censoring, failures."""

import dataclasses
import math

import numpy as np
import pytest
import xarray as xr
from scipy.stats import norm
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.data import write_nonmem
from pkpd.fit import default_estimated, fit_individual, individual_parameters
from pkpd.fit.individual import _Problem
from pkpd.models import load
from pkpd.simulate import simulate
from pkpd.simulate.compiled import Tolerances


def noiseless(model, doses, n, seed, omega=None):
    return simulate(model, doses, n=n, seed=seed, residual=False, return_parameters=True, omega=omega,
                    lloq={a: 0.0 for a in model.analytes})


def test_multiphasic_recovered_within_1_percent():
    model = load("multiphasic")
    cohort, truth = noiseless(model, ["3e8", "6e8"], 4, seed=11)
    fit = fit_individual(model, cohort)
    assert list(fit["parameter"].values) == default_estimated(model)
    estimates = fit["estimate"].to_pandas()
    np.testing.assert_allclose(estimates.to_numpy(), truth.loc[estimates.index, estimates.columns].to_numpy(),
                               rtol=0.01)
    assert fit["converged"].all()


def test_antigen_driven_recovered_within_1_percent():
    model = load("antigen_driven")
    estimate = ["rho", "alpha", "fblood", "b0"]
    omega = {p.name: 0 for p in model.parameters if p.iiv and p.name not in estimate}
    cohort, truth = noiseless(model, ["3e8", "1e6/kg"], 2, seed=12, omega=omega)
    fit = fit_individual(model, cohort, estimate=estimate)
    estimates = fit["estimate"].to_pandas()
    np.testing.assert_allclose(estimates.to_numpy(), truth.loc[estimates.index, estimate].to_numpy(), rtol=0.01)
    assert fit["converged"].all() and np.isfinite(fit["stderr"]).all()


def test_censored_residual_is_the_m3_likelihood():
    model = load("multiphasic")
    cohort = simulate(model, ["3e8"], n=1, seed=1)
    problem = _Problem(model, cohort, ["cmax"], cohort.subject_ids,
                       individual_parameters(fit_individual(model, cohort, estimate=["cmax"]), model), Tolerances())
    pred = np.full(len(problem.obs), 40.0)
    problem.censored = np.ones(len(pred), int)
    problem.lloq = np.full(len(pred), 50.0)
    sigma = model.observations["transgene"].sigma
    expected = math.sqrt(-2 * norm.logcdf((math.log(50) - math.log(40)) / sigma))
    np.testing.assert_allclose(problem.residuals(pred), expected)


def test_a_subject_that_cannot_be_fitted_is_reported_not_raised():
    model = load("multiphasic")
    cohort = simulate(load("antigen_driven+immunoglobulins"), ["3e8"], n=2, seed=3,
                      analytes=["transgene", "igg"])
    obs = cohort.observations
    drop = (obs["subject"] == "2") & (obs["analyte"] == "transgene")
    from pkpd.data import Cohort

    only_igg = Cohort(cohort.subjects, cohort.doses, obs[~drop].reset_index(drop=True), cohort.events,
                      cohort.analytes)
    fit = fit_individual(model, only_igg, estimate=["cmax", "tmax"])
    assert not bool(fit["converged"].sel(subject="2"))
    assert "no observations" in str(fit["reason"].sel(subject="2").values)
    assert bool(fit["converged"].sel(subject="1"))


def test_bad_requests_are_clear_errors():
    model = load("multiphasic")
    cohort = simulate(model, ["3e8"], n=1, seed=1)
    with pytest.raises(ValueError, match="no parameter"):
        fit_individual(model, cohort, estimate=["nope"])
    with pytest.raises(ValueError, match="not in the cohort"):
        fit_individual(model, cohort, subjects=["99"])


def test_result_is_a_dataset_saved_to_netcdf(tmp_path):
    model = load("multiphasic")
    cohort = simulate(model, ["3e8"], n=3, seed=2)
    fit = fit_individual(model, cohort)
    for name in ("estimate", "stderr", "rse_percent", "converged", "ofv", "aic", "bic", "n_obs"):
        assert name in fit
    assert np.all(fit["aic"] == fit["ofv"] + 2 * fit.sizes["parameter"])
    fit.to_netcdf(tmp_path / "fit.nc", engine="h5netcdf")
    back = xr.load_dataset(tmp_path / "fit.nc", engine="h5netcdf")
    np.testing.assert_allclose(back["estimate"], fit["estimate"])
    assert back.attrs["model"] == "multiphasic"


def test_fit_individual_command(tmp_path):
    model = load("multiphasic")
    write_nonmem(simulate(model, ["3e8", "6e8"], n=2, seed=5), tmp_path / "data.csv")
    result = CliRunner().invoke(app, ["fit-individual", "multiphasic", str(tmp_path / "data.csv"),
                                      "-o", str(tmp_path / "fit.nc")])
    assert result.exit_code == 0, result.output
    assert "4/4 subjects converged" in result.output and (tmp_path / "fit.nc").exists()


def test_convergence_is_judged_per_subject():
    """A subject is converged when a Gauss-Newton step on its own data lowers its -2 log L
    by less than 0.01; subjects still improving after a round are refitted on their own."""
    model = load("multiphasic")
    cohort, truth = noiseless(model, ["3e8", "6e8"], 4, seed=11)
    stopped = fit_individual(model, cohort, max_nfev=2, rounds=1)
    waiting = ~stopped["converged"].to_numpy()
    assert waiting.sum() >= 6  # two evaluations leave most subjects short of their optimum
    assert all(r.startswith("optimiser did not converge: -2 log L still falling after 1 round(s) of at most 2")
               for r in stopped["reason"].to_numpy()[waiting])
    resumed = fit_individual(model, cohort, max_nfev=2, rounds=1, initial=individual_parameters(stopped, model))
    assert float(resumed["ofv"].sum()) < float(stopped["ofv"].sum())
    assert fit_individual(model, cohort, max_nfev=20, rounds=10)["converged"].all()
    with pytest.raises(ValueError, match="must be at least 1"):
        fit_individual(model, cohort, rounds=0)


def test_a_parameter_the_data_do_not_determine_has_no_standard_error():
    """Only records before the peak: the decline parameters move no prediction, so their
    information is singular and the subject's standard errors are not reported (NaN)."""
    model = load("multiphasic")
    cohort, _ = noiseless(model, ["3e8"], 2, seed=3)
    early = cohort.observations[cohort.observations["time"] < 4].reset_index(drop=True)
    fit = fit_individual(model, dataclasses.replace(cohort, observations=early), estimate=["cmax", "alpha"])
    assert np.isnan(fit["stderr"]).all()
    full = fit_individual(model, cohort, estimate=["cmax", "alpha"])
    assert np.isfinite(full["stderr"]).all() and full["converged"].all()
