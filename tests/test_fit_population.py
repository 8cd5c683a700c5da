"""The population engine: log-density and gradient checks, an end-to-end fit, the result."""

import json
import math

import numpy as np
import pytest
import scipy.stats as st
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.data import write_nonmem
from pkpd.fit import FitResult, PopulationSpec, fit
from pkpd.fit.population import build_pymc_model, covariate_design
from pkpd.models import load
from pkpd.simulate import predict, simulate
from pkpd.simulate.compiled import Tolerances

FINE = Tolerances(rtol=1e-7, atol=1e-10)


@pytest.fixture(scope="module")
def small():
    model = load("antigen_driven")
    cohort = simulate(model, ["3e8", "1e6/kg"], n=3, seed=21, analytes=["transgene", "bcells"])
    spec = PopulationSpec.default(model, covariates=["rho~dose"], steps=FINE)
    # random-effect centres away from the typical values, so that the data's information (and
    # the whitening map built on it) is not trivial
    rng = np.random.default_rng(4)
    typical = np.log([model.parameter(n).typical for n in spec.estimated])
    cols = [spec.estimated.index(n) for n in spec.iiv]
    initial = {"mu": typical, "omega": np.full(len(spec.iiv), 0.3),
               "centre": typical[cols] + 0.2 * rng.standard_normal((6, len(cols))), "usable": np.ones(6, bool)}
    pm_model, pieces = build_pymc_model(spec, cohort, initial)
    return model, cohort, spec, pm_model, pieces


def _point(pm_model, seed=0):
    rng = np.random.default_rng(seed)
    point = pm_model.initial_point()
    return {k: v + 0.1 * rng.standard_normal(np.shape(v)) for k, v in point.items()}


def test_gradient_matches_finite_differences(small):
    _, _, _, pm_model, _ = small
    logp, dlogp = pm_model.compile_logp(), pm_model.compile_dlogp()
    point = _point(pm_model)
    keys = list(point)
    flat = np.concatenate([np.ravel(point[k]) for k in keys])

    def unflatten(v):
        out, i = {}, 0
        for k in keys:
            n = np.size(point[k])
            out[k] = v[i:i + n].reshape(np.shape(point[k]))
            i += n
        return out

    grad = dlogp(point)
    h = 1e-6
    for idx in range(len(flat)):
        e = np.zeros_like(flat)
        e[idx] = h
        fd = (logp(unflatten(flat + e)) - logp(unflatten(flat - e))) / (2 * h)
        assert fd == pytest.approx(grad[idx], rel=1e-5, abs=1e-5), (idx, fd, grad[idx])


def test_log_density_matches_an_independent_numpy_evaluation(small):
    model, cohort, spec, pm_model, pieces = small
    point = _point(pm_model, seed=1)
    value = pm_model.compile_logp(jacobian=False)(point)
    # the same density written out independently: priors + likelihood on LSODA predictions
    mu, u = point["mu"], point["u"]
    omega, sigma, beta = np.exp(point["omega_log__"]), np.exp(point["sigma_log__"]), point["beta"]
    priors = [spec.prior(n) for n in spec.estimated]
    total = sum(st.norm.logpdf(mu[k], math.log(p.median), p.sigma) for k, p in enumerate(priors))
    scale = [max(0.5, 2 * model.parameter(n).iiv) for n in spec.iiv]
    total += st.halfnorm.logpdf(omega, scale=scale).sum() + st.norm.logpdf(beta).sum()
    defaults = [model.observations[a].sigma for a in pieces["records"]["observed"]]
    total += st.lognorm.logpdf(sigma, s=0.5, scale=defaults).sum()
    X, _, owners = covariate_design(spec, cohort)
    log_theta = np.tile(mu, (len(cohort.subject_ids), 1))
    log_theta[:, owners[0]] += X[:, 0] * beta[0]
    # the sampler's u -> individual log values (population.py's whitening map, written out):
    # Lambda = H + Omega^-1 = C C^T, log theta = Lambda^-1 (H c + Omega^-1 typical) + C^-T u
    cols = [spec.estimated.index(n) for n in spec.iiv]
    centre, information = pm_model["eta_centre"].get_value(), pm_model["eta_information"].get_value()
    assert np.abs(information).max() > 1.0  # the data's information is in the map
    for i in range(len(cohort.subject_ids)):
        typical = log_theta[i, cols]
        precision = information[i] + np.diag(1 / omega ** 2)
        C = np.linalg.cholesky(precision)
        individual = (np.linalg.solve(precision, information[i] @ centre[i] + typical / omega ** 2)
                      + np.linalg.solve(C.T, u[i]))
        total += st.norm.logpdf(individual, typical, omega).sum() - np.log(np.diag(C)).sum()
        log_theta[i, cols] = individual
    params = {n: np.full(len(cohort.subject_ids), p.typical) for n, p in zip(model.parameter_names, model.parameters)}
    for k, n in enumerate(spec.estimated):
        params[n] = np.exp(log_theta[:, k])
    import pandas as pd

    pred = predict(model, cohort, pd.DataFrame(params, index=cohort.subject_ids), rtol=1e-11, atol=1e-14)
    obs = cohort.observations
    sd = obs["analyte"].map(dict(zip(pieces["records"]["observed"], sigma))).to_numpy()
    y, f, lloq, cens = obs["value"].to_numpy(), pred.to_numpy(), obs["lloq"].to_numpy(), obs["censored"].to_numpy()
    with np.errstate(divide="ignore"):  # pre-infusion transgene is 0: that branch is not selected
        quantified = st.norm.logpdf(np.log(y), np.log(f), sd) - np.log(y)
        censored = st.norm.logcdf(np.log(lloq), np.log(f), sd)
    total += np.where(cens == 1, censored, quantified).sum()
    assert value == pytest.approx(total, rel=1e-6)


def test_random_effects_map_is_non_centred_without_information():
    import pytensor
    import pytensor.tensor as pt

    from pkpd.fit.random_effects import random_effects

    u, typical, omega = pt.dmatrix("u"), pt.dmatrix("typical"), pt.dvector("omega")
    centre, information = pt.dmatrix("centre"), pt.tensor3("information")
    individual, log_prior = random_effects(u, typical, omega, None, centre, information)
    f = pytensor.function([u, typical, omega, centre, information], [individual, log_prior])
    rng = np.random.default_rng(0)
    uu, tt, om = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), np.array([0.2, 0.5, 1.0])
    value, density = f(uu, tt, om, rng.standard_normal((4, 3)), np.zeros((4, 3, 3)))
    np.testing.assert_allclose(value, tt + om * uu)
    assert density == pytest.approx(st.norm.logpdf(uu).sum())  # N(0, 1) in u: the Jacobian cancels omega


@pytest.mark.parametrize("correlated", [False, True])
def test_random_effects_map_gradient_matches_finite_differences(correlated):
    """The whitening map's hand-written reverse pass (Cholesky backward included), compiled by
    numba as in the sampler, against central differences of its value."""
    import pytensor
    import pytensor.tensor as pt

    from pkpd.fit.random_effects import random_effects

    rng = np.random.default_rng(1)
    N, Q = 5, 3
    u0, t0 = rng.standard_normal((N, Q)), rng.standard_normal((N, Q))
    A = rng.standard_normal((N, 6, Q))
    information = pt.constant(3 * np.einsum("nrk,nrl->nkl", A, A))
    centre = pt.constant(rng.standard_normal((N, Q)))
    u, t = pt.dmatrix("u"), pt.dmatrix("t")
    if correlated:
        scale0 = np.linalg.cholesky(0.2 * np.array([[1, 0.3, 0.1], [0.3, 1, 0.2], [0.1, 0.2, 1.0]]))
        scale = pt.dmatrix("chol")
        individual, log_prior = random_effects(u, t, None, scale, centre, information)
    else:
        scale0 = np.array([0.3, 0.6, 1.1])
        scale = pt.dvector("omega")
        individual, log_prior = random_effects(u, t, scale, None, centre, information)
    weights = rng.standard_normal((N, Q))
    objective = log_prior + pt.sum(weights * individual)
    f = pytensor.function([u, t, scale], [objective, *pytensor.grad(objective, [u, t, scale])], mode="NUMBA")
    values = [u0, t0, scale0]
    _, *grads = f(*values)
    h = 1e-6
    for which, grad in enumerate(grads):
        for idx in np.ndindex(values[which].shape):
            if correlated and which == 2 and idx[1] > idx[0]:
                continue  # the upper triangle of a Cholesky factor is not a parameter
            up = [v.copy() for v in values]
            down = [v.copy() for v in values]
            up[which][idx] += h
            down[which][idx] -= h
            fd = (f(*up)[0] - f(*down)[0]) / (2 * h)
            assert fd == pytest.approx(grad[idx], rel=1e-6, abs=1e-6), (which, idx)


def test_numba_and_python_implementations_of_the_op_agree(small):
    """The Op compiled into the sampler's graph and called from Python agree, and their value is
    the numpy likelihood of the predictions (pkpd.fit.likelihood) summed over the records; its
    gradient agrees with central differences."""
    import pytensor
    import pytensor.tensor as pt

    from pkpd.fit.likelihood import pointwise
    from pkpd.fit.op import LogLikelihoodOp

    _, _, spec, _, pieces = small
    records, predictions = pieces["records"], pieces["predictions"]
    op = LogLikelihoodOp(predictions, records, m4=False)
    x, sigma = pt.dmatrix("x"), pt.dvector("sigma")
    outputs = op(x, sigma, records["value"], records["censored"], *op.data().values())
    values = (np.log(predictions.fixed[:, predictions.est]) + 0.05, np.array([0.5, 0.3]))
    fast = pytensor.function([x, sigma], outputs, mode="NUMBA")(*values)
    slow = pytensor.function([x, sigma], outputs, mode="FAST_COMPILE")(*values)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    pred, _ = predictions.values(values[0])
    s = values[1][records["residual_sigma"]]
    reference = pointwise(pred, records["value"], records["lloq"], records["censored"], records["error"], s,
                          np.zeros_like(s), m4=False).sum()
    assert float(fast[0]) == pytest.approx(reference, rel=1e-10)
    f = pytensor.function([x, sigma], outputs[0], mode="NUMBA")
    h = 1e-6
    for idx in [(0, 0), (1, 1), (2, 0)]:
        up, down = values[0].copy(), values[0].copy()
        up[idx] += h
        down[idx] -= h
        fd = (f(up, values[1]) - f(down, values[1])) / (2 * h)
        assert fd == pytest.approx(fast[1][idx], rel=1e-5, abs=1e-6), idx
    assert np.isfinite(fast[0]) and np.abs(fast[1]).max() > 0


def test_the_sampler_calls_the_kernel_the_individual_fits_compiled(small):
    """The design's arrays reach the solver kernel typed alike from Python (the individual fits,
    read-only) and from the sampler's compiled log density (pytensor's inputs, made read-only), so
    a new model's kernel compiles once, not again in the sampler's compile process (20-30 s)."""
    from pkpd.simulate.compiled import solver_call

    predictions = small[4]["predictions"]
    kernel, _ = solver_call(predictions.design, predictions.steps)
    log_theta = np.log(predictions.fixed[:, predictions.est]) + 0.05
    from_python, d_python = predictions.values(log_theta)
    signatures = set(kernel.signatures)
    from_numba, d_numba = predictions.compiled()(log_theta)
    assert set(kernel.signatures) == signatures, "the sampler's log density needs a kernel of its own"
    np.testing.assert_array_equal(from_numba, from_python)
    np.testing.assert_array_equal(d_numba, d_python)


def test_bad_specifications_are_clear_errors():
    model = load("antigen_driven")
    with pytest.raises(ValueError, match="no parameter"):
        PopulationSpec.default(model, iiv=["nope"])
    with pytest.raises(ValueError, match="fixed constants"):
        PopulationSpec.default(model, iiv=["scale"])
    with pytest.raises(ValueError, match="unknown covariate"):
        PopulationSpec.default(model, covariates=["rho~height"])
    with pytest.raises(ValueError, match="PARAMETER~COVARIATE"):
        PopulationSpec.default(model, covariates=["rho"])
    with pytest.raises(ValueError, match="M3"):
        PopulationSpec.default(model, censoring="M5")


@pytest.fixture(scope="module")
def quick_fit():
    """A short end-to-end fit (not long enough to converge): structure, not accuracy."""
    model = load("multiphasic")
    cohort = simulate(model, ["3e8", "6e8"], n=6, seed=3)
    return fit(model, cohort, chains=2, draws=100, tune=100, seed=5, progress=False), cohort


def test_fit_result_structure_and_provenance(quick_fit, tmp_path):
    result, cohort = quick_fit
    tree = result.tree
    assert {"posterior", "sample_stats", "observed_data", "constant_data", "log_likelihood"} <= set(tree.children)
    assert tree["log_likelihood"]["y"].sizes["obs"] == len(cohort.observations)
    assert tree["log_likelihood"]["y_subject"].sizes["subject"] == 12
    np.testing.assert_allclose(tree["log_likelihood"]["y"].sum("obs"), tree["log_likelihood"]["y_subject"].sum("subject"))
    for key in ("model", "model_hash", "data_hash", "seed", "sampler_settings", "packages"):
        assert key in tree.attrs
    assert json.loads(tree.attrs["sampler_settings"])["chains"] == 2
    table = result.parameter_table()
    assert {"median", "lower", "upper", "r_hat", "ess_bulk", "ess_tail", "cv_percent", "shrinkage_percent"} <= set(table.columns)
    assert set(table["kind"]) == {"typical", "iiv", "residual"}
    names = {d.name for d in result.diagnostics()}
    assert names <= {"r_hat", "ess", "divergences", "bfmi", "solver", "reduction", "modes"}
    folder = result.save(tmp_path / "run")
    back = FitResult.load(folder)
    np.testing.assert_allclose(back.posterior["mu"], result.posterior["mu"])
    assert back.model.hash == result.model.hash and back.cohort.equals(result.cohort)
    assert back.spec.iiv == result.spec.iiv and back.converged == result.converged
    import arviz as az

    assert az.loo(back.tree, var_name="y_subject").elpd < 0


def test_fit_command_strict(tmp_path):
    model = load("multiphasic")
    write_nonmem(simulate(model, ["3e8"], n=4, seed=8), tmp_path / "data.csv")
    result = CliRunner().invoke(app, ["fit", "multiphasic", str(tmp_path / "data.csv"), "-o", str(tmp_path / "run"),
                                      "--chains", "2", "--draws", "50", "--tune", "50", "--seed", "1",
                                      "--no-progress", "--strict"])
    assert "Population parameters" in result.output and "R-hat" in result.output
    assert result.exit_code == 1  # 50 draws cannot pass the ESS check: --strict fails the run
    for name in ("posterior.nc", "data.csv", "parameters.csv", "diagnostics.txt", "model/builtin_multiphasic.py"):
        assert (tmp_path / "run" / name).exists()


def test_fit_command_rejects_a_target_acceptance_outside_0_1(tmp_path):
    write_nonmem(simulate(load("multiphasic"), ["3e8"], n=2, seed=8), tmp_path / "data.csv")
    result = CliRunner().invoke(app, ["fit", "multiphasic", str(tmp_path / "data.csv"), "-o", str(tmp_path / "run"),
                                      "--target-accept", "1.2", "--no-progress"])
    assert result.exit_code != 0 and "--target-accept" in result.output
    assert not (tmp_path / "run").exists()  # nothing half-written


def _likelihood_case(code, seed=0):
    rng = np.random.default_rng(seed)
    n = 16
    pred, y = np.exp(rng.normal(2, 1, n)), np.exp(rng.normal(2, 1, n))
    lloq = np.full(n, 3.0)
    censored = np.where(y < lloq, 1, 0)
    censored[:2] = -1  # above a limit
    censored[2:4] = 1
    y = np.where(censored == 1, lloq, y)
    return pred, y, lloq, censored, np.full(n, code), np.full(n, 0.4), np.full(n, 0.5)


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("m4", [False, True])
def test_likelihood_kernel_matches_scipy_stats(code, m4):
    """Each record's log-likelihood against scipy.stats, written from the definitions."""
    from pkpd.fit import likelihood

    pred, y, lloq, censored, error, sigma, additive = _likelihood_case(code)
    value = likelihood.pointwise(pred, y, lloq, censored, error, sigma, additive, m4=m4)
    if code == 0:
        dist, v, limit = st.norm(np.log(pred), sigma), np.log(y), np.log(lloq)
        density = dist.logpdf(v) - np.log(y)
        below = dist.logcdf(limit)
    else:
        sd = {1: sigma * pred, 2: np.sqrt(additive ** 2 + (sigma * pred) ** 2), 3: additive,
              4: additive + sigma * pred}[code]
        dist, v = st.norm(pred, sd), y
        density = dist.logpdf(v)
        below = np.log(dist.cdf(lloq) - dist.cdf(0)) - dist.logsf(0) if m4 else dist.logcdf(lloq)
    expected = np.where(censored == 0, density, np.where(censored == 1, below, dist.logsf(v)))
    np.testing.assert_allclose(value, expected, rtol=1e-10)


def test_log_normal_cdf_is_accurate_in_both_tails():
    import scipy.special as sc

    from pkpd.fit.likelihood import log_ndtr

    for z in (-200.0, -38.0, -20.5, -19.5, -5.0, 0.0, 3.0, 6.5, 12.0, 40.0):
        assert log_ndtr(z) == pytest.approx(sc.log_ndtr(z), rel=1e-9, abs=1e-300), z


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("m4", [False, True])
def test_likelihood_kernel_derivatives_match_finite_differences(code, m4):
    from pkpd.fit import likelihood

    pred, y, lloq, censored, error, sigma, additive = _likelihood_case(code, seed=3)
    n = len(pred)
    out, d_pred, d_sigma, d_additive = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    likelihood.record_terms(pred, y, lloq, censored, error, sigma, additive, m4, out, d_pred, d_sigma, d_additive)

    def value(p=pred, s=sigma, a=additive):
        return likelihood.pointwise(p, y, lloq, censored, error, s, a, m4=m4)

    h = 1e-6
    fd_pred = (value(p=pred * (1 + h)) - value(p=pred * (1 - h))) / (2 * h * pred)
    fd_sigma = (value(s=sigma + h) - value(s=sigma - h)) / (2 * h)
    fd_additive = (value(a=additive + h) - value(a=additive - h)) / (2 * h)
    np.testing.assert_allclose(d_pred, fd_pred, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_sigma, fd_sigma, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_additive, fd_additive, rtol=1e-5, atol=1e-7)


def test_the_sampler_calls_the_record_likelihood_the_individual_fits_compiled():
    """record_terms is typed alike from Python (`pointwise`, the individual fits) and from the
    sampler's log density (pytensor's writable arrays): it compiles once per pkpd version."""
    from pkpd.fit import likelihood
    from pkpd.fit.op import _log_likelihood

    pred, y, lloq, censored, error, sigma, additive = _likelihood_case(2, seed=5)
    n = len(pred)
    from_python = likelihood.pointwise(pred, y, lloq, censored, error, sigma, additive)
    signatures = set(likelihood.record_terms.signatures)
    residual = np.array([sigma[0], additive[0]])
    index_s, index_a = np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    total, _, _ = _log_likelihood(pred.copy(), np.ones((n, 1)), np.zeros(n, dtype=np.int64), 1, index_s, index_a,
                                  residual, y.copy(), np.nan_to_num(lloq), censored.copy(), error.copy(), False)
    assert set(likelihood.record_terms.signatures) == signatures, "the sampler's likelihood compiles its own"
    assert total == pytest.approx(from_python.sum(), rel=1e-12)  # the residual SDs are the same for every record


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4])
def test_individual_fit_residual_derivatives_match_finite_differences(code):
    from pkpd.fit import likelihood

    pred, y, lloq, censored, error, sigma, additive = _likelihood_case(code, seed=5)
    dpred = np.eye(len(pred))  # one "parameter" per record: the prediction itself
    r, J = likelihood.residual_derivatives(pred, dpred, y, lloq, censored, error, sigma, additive)
    h = 1e-7
    up = likelihood.residuals(pred * (1 + h), y, lloq, censored, error, sigma, additive)
    down = likelihood.residuals(pred * (1 - h), y, lloq, censored, error, sigma, additive)
    np.testing.assert_allclose(np.diag(J), (up - down) / (2 * h * pred), rtol=1e-5, atol=1e-7)


def test_the_cached_entry_points_agree_with_nutpies_own(small):
    """pkpd.fit.compile.compile_model (C entry points cached on disk) and nutpie's
    compile_pymc_model wrap the same log density: the same log density and gradient at random
    points (up to rounding: the pieces are optimised apart), and new data reach it through
    nutpie's with_data."""
    import ctypes

    import nutpie

    from pkpd.fit.compile import compile_model

    *_, pm_model, pieces = small
    (ours, _), theirs = compile_model(pm_model), nutpie.compile_pymc_model(pm_model)
    assert "shared_0" in ours.shared_data

    def call(compiled, x):
        grad, logp = np.zeros_like(x), np.zeros(())
        pointer = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        code = compiled.compiled_logp_func.ctypes(len(x), pointer(x), pointer(grad), pointer(logp),
                                                  ctypes.c_void_p(compiled.user_data.ctypes.data))
        assert code == 0
        return float(logp), grad

    rng = np.random.default_rng(3)
    y = pieces["records"]["value"] * 1.5
    for a, b in ((ours, theirs), (ours.with_data(y_obs=y), theirs.with_data(y_obs=y))):
        for _ in range(3):
            x = 0.1 * rng.standard_normal(ours.n_dim)
            (la, ga), (lb, gb) = call(a, x), call(b, x)
            assert la == pytest.approx(lb, rel=1e-9)
            np.testing.assert_allclose(ga, gb, rtol=1e-6, atol=1e-8 * np.abs(gb).max())
    x = np.zeros(ours.n_dim)
    assert call(ours.with_data(y_obs=y), x)[0] != call(ours, x)[0]


def test_compiled_caches_follow_the_whole_source(tmp_path, monkeypatch):
    """numba keys a cached function by its own file only: a cached log density kept an edited
    likelihood's old code (numba issue #6845). pkpd's numba cache folder and the sampler's cache
    keys follow a digest of every source file, so any edit invalidates them."""
    import shutil

    import numba

    from pkpd import _cache

    assert numba.config.CACHE_DIR.endswith(_cache.source_digest())
    copy = tmp_path / "pkpd"
    shutil.copytree(_cache.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_cache, "PACKAGE", copy)
    _cache.source_digest.cache_clear()
    try:
        before = _cache.source_digest()
        edited = copy / "fit" / "likelihood.py"
        edited.write_text(edited.read_text() + "\n# an edit\n")
        _cache.source_digest.cache_clear()
        assert _cache.source_digest() != before
    finally:
        _cache.source_digest.cache_clear()


def test_the_specification_record_names_interpolation_only_where_it_is_set():
    """A fit records `interpolate` in its solver settings only when it is set, so that the
    versions before it still read the run; the record reads back either way."""
    from pkpd.fit.population import spec_from_record, spec_record

    model = load("multiphasic")
    spec = PopulationSpec.default(model)
    plain = spec_record(spec)
    assert "interpolate" not in plain["steps"] and spec_from_record(model, plain).steps == spec.steps
    dense = spec_record(PopulationSpec.default(model, steps=Tolerances(interpolate=True)))
    assert dense["steps"]["interpolate"] is True and spec_from_record(model, dense).steps.interpolate
