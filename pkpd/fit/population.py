"""The Bayesian hierarchical population model, built from any model definition.

    log theta_ik = mu_k + sum_c beta_c * X_ic + eta_ik
    eta_i ~ N(0, diag(omega)) (or N(0, Omega) with an LKJ prior on its correlations)
    mu_k ~ N(log prior median, prior sigma)      from the model's parameter priors (overridable)
    omega_k ~ HalfNormal(max(0.5, 2 * default IIV SD))       (overridable: omega_NAME)
    beta_c ~ N(0, 1)                              covariate effects on typical values
    sigma_a ~ LogNormal(log model default, 0.5)  per-analyte log-scale or proportional SD
    sigma_add_a ~ LogNormal(log model default, 0.5)  per-analyte additive SD (additive, combined)
    y ~ residual-error model around the predictions; below the LLOQ: M3 (or M4)

The sampler does not see eta: it sees u, which `random_effects` maps to eta by whitening each
subject's conditional posterior with the information its data carry (from the individual fits).
Without individual fits the map is the usual non-centred one, eta = omega * u.

The data's log-likelihood and its gradient come from one compiled Op (the solver, closed forms
where the model has them, fused with the likelihood kernel: `op.LogLikelihoodOp`); the sampler
is nutpie (numba backend).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..data.cohort import Cohort
from ..models import LogNormal, Model
from .priors import Prior, check_priors
from ..simulate.compiled import Design, Tolerances
from . import likelihood

CATEGORICAL = ("lymphodepletion", "product", "disease")
CONTINUOUS = ("dose", "weight")


@dataclass(frozen=True)
class CovariateEffect:
    """An effect of a covariate on a parameter's typical value.

    categorical (lymphodepletion, product, disease): theta * exp(beta_level) for each level other
    than the reference (default: the most common level);
    continuous (dose in CAR+ cells, weight in kg): 'power' theta * (x/ref)^beta (default) or
    'exponential' theta * exp(beta * (x - ref)); ref defaults to the cohort median."""

    parameter: str
    covariate: str
    form: str = "auto"
    reference: float | str | None = None

    @classmethod
    def parse(cls, text: str) -> "CovariateEffect":
        """'rho~lymphodepletion', 'cmax~dose:power', 'alpha~weight:exponential'."""
        left, sep, right = str(text).partition("~")
        if not sep or not left.strip() or not right.strip():
            raise ValueError(f"covariate effect {text!r} is not of the form PARAMETER~COVARIATE[:FORM]")
        covariate, _, form = right.partition(":")
        form = form.strip() or "auto"
        if form not in EFFECT_FORMS:
            raise ValueError(f"covariate effect {text!r}: unknown form {form!r}; use "
                             f"{' or '.join(f for f in EFFECT_FORMS if f != 'auto')} (or no form)")
        return cls(left.strip(), covariate.strip(), form)

    @property
    def label(self) -> str:
        return f"{self.parameter}~{self.covariate}"


EFFECT_FORMS = ("auto", "power", "exponential")
#: covariates computed from the records rather than read from a column (see _covariate_values)
DERIVED_COVARIATES = ("dose",)


@dataclass(frozen=True)
class PopulationSpec:
    """What the population fit estimates. Defaults come from the model definition."""

    model: Model
    iiv: tuple[str, ...] = ()
    fixed_effects: tuple[str, ...] = ()
    covariates: tuple[CovariateEffect, ...] = ()
    priors: Mapping[str, Prior] = field(default_factory=dict)
    correlated: bool = False
    censoring: str = "M3"
    # adaptive Cash-Karp by default: about 2x faster than fixed RK4 and 25-65x more accurate at
    # individual parameter draws (measured on antigen_driven, see tests/test_simulate.py)
    steps: Tolerances = Tolerances()

    @classmethod
    def default(cls, model: Model, *, iiv: Sequence[str] | None = None,
                fixed_effects: Sequence[str] | None = None,
                covariates: Sequence[str | CovariateEffect] = (), priors: Mapping | None = None,
                correlated: bool = False, censoring: str = "M3", steps: Tolerances | None = None,
                analytes: Sequence[str] | None = None):
        """analytes: the observed analytes; by default variability is given only to the
        parameters that their predictions depend on (the others have no data to inform them)."""
        if iiv is None:
            informed = model.parameters_affecting(analytes if analytes is not None else model.analytes)
            iiv = tuple(p.name for p in model.parameters if p.iiv and not p.fixed and p.name in informed)
        iiv = tuple(iiv)
        fixed_effects = tuple(fixed_effects or ())
        names = set(model.parameter_names)
        for group, label in ((iiv, "iiv"), (fixed_effects, "fixed_effects")):
            unknown = sorted(set(group) - names)
            if unknown:
                raise ValueError(f"{label}: model {model.name} has no parameter(s) {', '.join(unknown)}")
            fixed = sorted(n for n in group if model.parameter(n).fixed)
            if fixed:
                raise ValueError(f"{label}: parameter(s) {', '.join(fixed)} are fixed constants of {model.name}")
        effects = tuple(c if isinstance(c, CovariateEffect) else CovariateEffect.parse(c) for c in covariates)
        estimated = set(iiv) | set(fixed_effects)
        for effect in effects:
            if effect.parameter not in estimated:
                raise ValueError(f"covariate effect {effect.label}: parameter {effect.parameter!r} is not "
                                 f"estimated (estimated: {', '.join(sorted(estimated))})")
            if effect.covariate not in CATEGORICAL + CONTINUOUS:
                raise ValueError(f"covariate effect {effect.label}: unknown covariate {effect.covariate!r}; "
                                 f"use one of {', '.join(CATEGORICAL + CONTINUOUS)}")
        priors = check_priors(model, iiv, priors or {})
        if censoring not in ("M3", "M4"):
            raise ValueError(f"censoring must be 'M3' or 'M4', not {censoring!r}")
        return cls(model, iiv, tuple(n for n in fixed_effects if n not in iiv), effects, priors,
                   correlated, censoring, steps or Tolerances())

    @property
    def estimated(self) -> list[str]:
        """Population parameters, in model order (those with IIV first in `iiv` order is not
        needed: columns of log theta follow this list)."""
        wanted = set(self.iiv) | set(self.fixed_effects)
        return [n for n in self.model.parameter_names if n in wanted]

    def prior(self, name: str) -> LogNormal:
        """The prior of a parameter's typical value."""
        return self.priors.get(name) or self.model.parameter(name).prior_or_default

    def omega_scale(self, name: str) -> float:
        """Scale of the HalfNormal prior on the variability SD of parameter `name`."""
        if f"omega_{name}" in self.priors:
            return self.priors[f"omega_{name}"].scale
        return max(0.5, 2 * (self.model.parameter(name).iiv or 0.25))

    def residual_prior(self, analyte: str, additive: bool = False) -> LogNormal:
        """The prior of an analyte's residual SD: log-scale or proportional, or additive."""
        obs = self.model.observations[analyte]
        if additive:
            return self.priors.get(f"sigma_add_{analyte}") or obs.additive_prior_or_default
        return self.priors.get(f"sigma_{analyte}") or obs.sigma_prior_or_default


def spec_record(spec: PopulationSpec) -> dict:
    """The specification as plain data (the run folder's record of it)."""
    from dataclasses import asdict

    priors = {k: ({"LogNormal": [v.median, v.sigma]} if isinstance(v, LogNormal) else {"HalfNormal": [v.scale]})
              for k, v in spec.priors.items()}
    return {"iiv": list(spec.iiv), "fixed_effects": list(spec.fixed_effects),
            "covariates": [c.label + (f":{c.form}" if c.form != "auto" else "") for c in spec.covariates],
            "priors": priors, "correlated": spec.correlated, "censoring": spec.censoring,
            # `interpolate` only where it is set, so that the versions before it read the fit
            "steps": {"solver": "adaptive",
                      **{k: v for k, v in asdict(spec.steps).items() if k != "interpolate" or v}}}


def spec_from_record(model: Model, record: dict) -> PopulationSpec:
    """The specification `spec_record` wrote, for `model`."""
    from ..models import HalfNormal

    priors = {}
    for name, value in record.get("priors", {}).items():
        if isinstance(value, dict):
            (kind, args), = value.items()
            priors[name] = LogNormal(*args) if kind == "LogNormal" else HalfNormal(*args)
        else:  # [median, sigma] as written by earlier versions
            priors[name] = LogNormal(*value)
    steps = record.get("steps")
    return PopulationSpec.default(
        model, iiv=record.get("iiv"), fixed_effects=record.get("fixed_effects"),
        covariates=record.get("covariates", ()), priors=priors, correlated=bool(record.get("correlated", False)),
        censoring=record.get("censoring", "M3"),
        steps=Tolerances(**{k: v for k, v in steps.items() if k != "solver"}) if isinstance(steps, dict) else None)


def _covariate_values(cohort: Cohort) -> dict[str, np.ndarray]:
    subjects = cohort.subjects
    first = cohort.doses.sort_values("time", kind="stable").groupby("subject")["absolute"].first()
    return {"dose": first.reindex(subjects.index).to_numpy(float), "weight": subjects["weight"].to_numpy(float)}


def covariate_design(spec: PopulationSpec, cohort: Cohort,
                     reference: Cohort | None = None) -> tuple[np.ndarray, list[str], list[int]]:
    """(X (N, n_columns), column labels, estimated-parameter index of each column).

    reference: the cohort that fixes the reference level and value of each covariate (the
    fitted cohort, when building X for new subjects); default `cohort` itself."""
    reference = reference if reference is not None else cohort
    subjects = cohort.subjects
    values = _covariate_values(cohort)
    reference_values = _covariate_values(reference)
    columns, labels, owners = [], [], []
    estimated = spec.estimated
    for effect in spec.covariates:
        k = estimated.index(effect.parameter)
        if effect.covariate in CATEGORICAL:
            raw = subjects[effect.covariate].astype(object)
            levels = reference.subjects[effect.covariate].astype(object).dropna().astype(str)
            if levels.nunique() < 2:
                raise ValueError(f"covariate effect {effect.label}: {effect.covariate} takes a single value "
                                 "in this cohort; the effect cannot be estimated")
            unseen = sorted(set(raw.dropna().astype(str)) - set(levels))
            if unseen:
                raise ValueError(f"covariate effect {effect.label}: {effect.covariate} {', '.join(unseen)} was not "
                                 f"in the fitted cohort ({', '.join(sorted(set(levels)))}); its effect is unknown")
            base = str(effect.reference) if effect.reference is not None else levels.value_counts().index[0]
            for level in sorted(set(levels) - {base}):
                columns.append((raw.astype(str) == level).to_numpy(float))
                labels.append(f"{effect.parameter}~{effect.covariate}[{level}]")
                owners.append(k)
        else:
            x = values[effect.covariate]
            if np.isnan(x).any():
                raise ValueError(f"covariate effect {effect.label}: {effect.covariate} is missing for "
                                 f"{int(np.isnan(x).sum())} subject(s)")
            ref = float(effect.reference) if effect.reference is not None else \
                float(np.median(reference_values[effect.covariate]))
            form = "power" if effect.form == "auto" else effect.form
            if form == "power":
                columns.append(np.log(x / ref))
            elif form == "exponential":
                columns.append(x - ref)
            else:
                raise ValueError(f"covariate effect {effect.label}: form must be power or exponential")
            labels.append(f"{effect.parameter}~{effect.covariate}:{form}")
            owners.append(k)
    X = np.column_stack(columns) if columns else np.zeros((len(subjects), 0))
    return X, labels, owners


def record_arrays(spec: PopulationSpec, design: Design) -> dict:
    """Per-record arrays of the likelihood: value, LLOQ, censoring, error model, analyte slot,
    and where each record's residual SDs sit in the residual vector [sigma..., sigma_add...]
    (`residual_sigma`, `residual_additive`; -1 where the error model has no such part)."""
    model = spec.model
    observed = [a for a in design.analyte_names if (design.analyte == design.analyte_names.index(a)).any()]
    slot = np.array([observed.index(design.analyte_names[a]) for a in design.analyte], dtype=np.int64)
    error = np.array([likelihood.ERROR_CODE[model.observations[a].error] for a in observed])
    with_sigma = [a for a in observed if model.observations[a].has_sigma]
    with_additive = [a for a in observed if model.observations[a].has_additive]
    index_sigma = np.array([with_sigma.index(a) if a in with_sigma else -1 for a in observed], dtype=np.int64)
    index_additive = np.array([len(with_sigma) + with_additive.index(a) if a in with_additive else -1
                               for a in observed], dtype=np.int64)
    return {"observed": observed, "slot": slot, "error": error[slot], "value": design.value,
            "lloq": np.nan_to_num(design.lloq, nan=0.0), "censored": design.censored,
            "sigma_analytes": with_sigma, "additive_analytes": with_additive,
            "residual_sigma": index_sigma[slot], "residual_additive": index_additive[slot]}


def residual_vector(spec: PopulationSpec, records: dict) -> np.ndarray:
    """The model's typical residual SDs in the order of the residual vector."""
    obs = spec.model.observations
    return np.array([obs[a].sigma for a in records["sigma_analytes"]]
                    + [obs[a].additive for a in records["additive_analytes"]], float)


def record_sds(records: dict, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each record's (log-scale or proportional SD, additive SD) from a residual vector."""
    padded = np.append(np.asarray(residual, float), 0.0)  # index -1 reads the 0 at the end
    return padded[records["residual_sigma"]], padded[records["residual_additive"]]


def build_pymc_model(spec: PopulationSpec, cohort: Cohort, initial: Mapping[str, np.ndarray] | None = None):
    """The PyMC model, and the pieces needed to read its posterior."""
    import pymc as pm
    import pytensor.tensor as pt

    from .op import LogLikelihoodOp, Predictions
    from .random_effects import random_effects

    model = spec.model
    design = Design(model, cohort)
    if design.n_obs == 0:
        raise ValueError(f"the cohort has no observations of the analytes {model.name} predicts "
                         f"({', '.join(model.analytes)})")
    records = record_arrays(spec, design)
    estimated = spec.estimated
    iiv_index = [estimated.index(n) for n in spec.iiv]
    X, cov_labels, owners = covariate_design(spec, cohort)
    N, K = len(cohort.subject_ids), len(estimated)
    fixed = np.tile([p.typical for p in model.parameters], (N, 1))
    predictions = Predictions(design, estimated, fixed, spec.steps)
    initial = dict(initial or {})
    pieces = {"design": design, "records": records, "predictions": predictions, "X": X,
              "covariate_labels": cov_labels}
    coords = {"subject": cohort.subject_ids, "parameter": estimated, "iiv_parameter": list(spec.iiv),
              "analyte": records["sigma_analytes"], "additive_analyte": records["additive_analytes"],
              "covariate_effect": cov_labels}
    with pm.Model(coords=coords) as pm_model:
        priors = [spec.prior(n) for n in estimated]
        mu = pm.Normal("mu", mu=np.log([p.median for p in priors]), sigma=[p.sigma for p in priors],
                       dims="parameter", initval=initial.get("mu"))
        log_theta = pt.zeros((N, K)) + mu[None, :]
        if cov_labels:
            beta = pm.Normal("beta", 0.0, 1.0, dims="covariate_effect", initval=initial.get("beta"))
            owner = np.zeros((len(cov_labels), K))
            owner[np.arange(len(cov_labels)), owners] = 1.0
            log_theta = log_theta + pt.dot(X * beta[None, :], owner)
        if spec.iiv:
            scale = np.array([spec.omega_scale(n) for n in spec.iiv])
            if spec.correlated and len(spec.iiv) > 1:
                chol, _, omega = pm.LKJCholeskyCov("chol", n=len(spec.iiv), eta=2.0,
                                                   sd_dist=pm.HalfNormal.dist(sigma=scale, shape=len(spec.iiv)),
                                                   compute_corr=True)
                pm.Deterministic("omega", omega, dims="iiv_parameter")
            else:
                omega = pm.HalfNormal("omega", sigma=scale, dims="iiv_parameter", initval=initial.get("omega"))
                chol = None
            typical_iiv = log_theta[:, iiv_index]
            centres = random_effect_centres(spec, pieces, initial)
            centre = pm.Data("eta_centre", centres["eta_centre"])
            information = pm.Data("eta_information", centres["eta_information"])
            u = pm.Flat("u", dims=("subject", "iiv_parameter"), initval=np.zeros((N, len(spec.iiv))))
            individual_iiv, log_prior = random_effects(u, typical_iiv, omega, chol, centre, information)
            pm.Potential("random_effects", log_prior)
            pm.Deterministic("eta", individual_iiv - typical_iiv, dims=("subject", "iiv_parameter"))
            log_theta = pt.set_subtensor(log_theta[:, iiv_index], individual_iiv)
        pm.Deterministic("typical", pt.exp(mu), dims="parameter")
        pm.Deterministic("theta", pt.exp(log_theta), dims=("subject", "parameter"))
        parts = []
        for name, analytes, additive in (("sigma", records["sigma_analytes"], False),
                                         ("sigma_add", records["additive_analytes"], True)):
            if analytes:
                priors = [spec.residual_prior(a, additive) for a in analytes]
                parts.append(pm.LogNormal(name, mu=np.log([p.median for p in priors]), sigma=[p.sigma for p in priors],
                                          dims="additive_analyte" if additive else "analyte",
                                          initval=initial.get(name)))
        residual = pt.concatenate(parts) if len(parts) > 1 else parts[0]
        # observed values as data, so that a compiled model can be refitted to new values (SBC)
        y = pm.Data("y_obs", records["value"])
        censored = pm.Data("censored_obs", records["censored"].astype("int64"))
        data_loglik = LogLikelihoodOp(predictions, records, m4=spec.censoring == "M4")
        # the design as data too: the compiled log density is then the same function for any
        # cohort, and pytensor's cache serves an unchanged model's refit without compiling
        design_data = [pm.Data(f"design_{name}", value) for name, value in data_loglik.data().items()]
        total, _, _ = data_loglik(log_theta, residual, y, censored, *design_data)
        pm.Potential("loglik", total)
    return pm_model, pieces


def initial_values(spec: PopulationSpec, individual) -> dict[str, np.ndarray]:
    """Starting point from individual fits (converged, or stopped by their evaluation budget):
    mu = median of log estimates, omega = their SD; and the centre of each subject's random
    effects (its log estimates; `usable` marks the subjects that have them).

    A subject whose individual fits found several equally good optima (`n_modes` > 1: a lag
    time between two samples, an absorption rate the data do not bound) has no usable centre:
    a Gaussian around one of its optima misdescribes it, and the random-effects map built on it
    pins the subject near that optimum so tightly that chains which meet the other one stall
    (the warfarin validation case: without this, one chain of four stalled with 738 divergences)."""
    estimated = spec.estimated
    N = individual.sizes["subject"]
    logs = np.full((N, len(estimated)), np.nan)
    # a fit stopped by its evaluation budget is not an estimate, but it is a far better start
    # than the typical value (the joint fit of many subjects often stops there)
    usable = individual["converged"].to_numpy() | np.char.startswith(
        individual["reason"].to_numpy().astype(str), "optimiser did not converge")
    single = individual["n_modes"].to_numpy() <= 1 if "n_modes" in individual else np.ones(N, bool)
    for k, name in enumerate(estimated):
        if name in individual["parameter"].values:
            values = individual["estimate"].sel(parameter=name).to_numpy()
            ok = usable & np.isfinite(values) & (values > 0)
            logs[ok, k] = np.log(values[ok])
    typical = np.log([spec.model.parameter(n).typical for n in estimated])
    with warnings.catch_warnings():  # columns without any converged estimate fall back below
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(logs, axis=0)
        sd = np.nanstd(logs, axis=0)
    mu = np.where(np.isfinite(median), median, typical)
    out = {"mu": mu}
    if spec.iiv:
        cols = [estimated.index(n) for n in spec.iiv]
        out["omega"] = np.clip(np.where(np.isfinite(sd[cols]), sd[cols], 0.3), 0.05, 1.5)
        centre = logs[:, cols]
        out["usable"] = np.isfinite(centre).all(axis=1) & single
        out["centre"] = np.where(np.isfinite(centre), centre, mu[cols][None, :])
    return out


def random_effect_centres(spec: PopulationSpec, pieces: dict, initial: Mapping[str, np.ndarray]) -> dict:
    """The data of the random-effects map: each subject's centre (N, Q) and its data's
    information (N, Q, Q) there, from `initial_values`; zero information (the non-centred map)
    where a subject has no individual estimate, or for all subjects without initial values."""
    N, Q = len(pieces["design"].subjects), len(spec.iiv)
    if "centre" not in initial:
        return {"eta_centre": np.zeros((N, Q)), "eta_information": np.zeros((N, Q, Q))}
    at = np.tile(initial["mu"], (N, 1))
    at[:, [spec.estimated.index(n) for n in spec.iiv]] = initial["centre"]
    information = data_information(spec, pieces, at) * initial["usable"][:, None, None]
    return {"eta_centre": np.asarray(initial["centre"], float), "eta_information": information}


def data_information(spec: PopulationSpec, pieces: dict, log_theta: np.ndarray,
                     residual: np.ndarray | None = None) -> np.ndarray:
    """(N, Q, Q) Gauss-Newton information of each subject's data about its log parameters with
    variability, at log_theta (N, K): sum over quantified records of w^2 g g^T, with g the
    derivative of the log prediction and w^2 the Fisher information of the record about it
    under the residual error `residual` (default: the model's default SDs; censored records are
    left out)."""
    rec, design = pieces["records"], pieces["design"]
    pred, jac = pieces["predictions"].values(log_theta)
    cols = [spec.estimated.index(n) for n in spec.iiv]
    f = np.maximum(pred, 1e-300)
    g = jac[:, cols] / f[:, None]
    sigma, additive = record_sds(rec, residual_vector(spec, rec) if residual is None else residual)
    _, _, sd = likelihood.standardise(pred, rec["value"], rec["lloq"], rec["error"], sigma, additive)
    # the mean of each record's scale moves with log f at rate 1 ('log') or f (normal models)
    weight = np.square(np.where(rec["error"] == 0, 1.0, f) / sd)
    weight[(rec["censored"] != 0) | ~np.isfinite(weight)] = 0.0
    g = np.where(np.isfinite(g), g, 0.0)
    N, Q = log_theta.shape[0], len(cols)
    information = np.zeros((N, Q, Q))
    np.add.at(information, design.subject_index, weight[:, None, None] * g[:, :, None] * g[:, None, :])
    return information


def pointwise_loglik(spec: PopulationSpec, pieces: dict, theta: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """Log-likelihood of every record for one posterior draw (numpy, same formulas as the sampler).

    theta: (N, K) individual values; residual: the residual vector (`record_arrays`)."""
    from ..simulate.compiled import predict_compiled

    rec = pieces["records"]
    pred, _ = predict_compiled(pieces["design"], pieces["predictions"].individual(theta), [], spec.steps)
    sigma, additive = record_sds(rec, residual)
    return likelihood.pointwise(pred, rec["value"], rec["lloq"], rec["censored"], rec["error"], sigma, additive,
                                m4=spec.censoring == "M4")


__all__ = ["CovariateEffect", "PopulationSpec", "build_pymc_model", "initial_values", "pointwise_loglik",
           "covariate_design", "record_arrays", "record_sds", "residual_vector", "spec_record", "spec_from_record"]
