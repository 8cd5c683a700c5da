"""The pieces a model is declared with: parameters, observations, modules.

A *module* is one part of a model (a cellular-kinetic model, or a PD module such as
cytokines). Its right-hand side, initial states, closed forms, signals and observation
functions are plain Python functions over a math namespace `m` (m.exp, m.log, m.where,
...). pkpd traces them once with sympy and generates every executable form from the
same expressions (numpy for simulation and lmfit, exact Jacobians and compiled code for
the Bayesian engine), so the right-hand side is written once.

Function signatures (all arguments are attribute namespaces):
    initial(p, c, m)            -> {state: value before the first dose}
    rhs(t, s, p, c, x, m)       -> {state: ds/dt}
    closed_form(t, p, c, x, m)  -> {state: value at t}       (instead of, or beside, rhs)
    signal(t, s, p, c, x, m)    -> value offered to downstream modules
    observe(t, s, p, c, x, m)   -> predicted value of an analyte
where t is the time since the subject's first dose in the module's `time_unit`, s are states,
p parameters, c covariates (dose: the first dose's amount in the module's `dose_unit`; ld,
bcma, cd20 as 0/1; weight in kg; and any covariate the module declares, time-varying ones as
step functions) and x the signals of upstream modules.

Doses reach an ODE as events (NONMEM's semantics): a bolus adds F*amount to its target state,
an infusion adds F*amount/duration per time unit while it runs; F (bioavailability) and the lag
time are expressions of p and c declared per target with `Dosing`. A closed form sees a single
dose at t = 0 through c.dose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

ERROR_MODELS = ("log", "proportional", "additive", "combined", "combined1")
COVARIATES = ("dose", "ld", "bcma", "cd20", "weight")
TIME_UNITS = ("min", "h", "d", "w")


class ModelError(ValueError):
    """A model definition or composition that cannot work; the message names the part."""


@dataclass(frozen=True)
class LogNormal:
    """Prior on a positive parameter: log(value) ~ Normal(log(median), sigma)."""

    median: float
    sigma: float

    def __post_init__(self):
        if not (self.median > 0 and self.sigma > 0 and math.isfinite(self.median) and math.isfinite(self.sigma)):
            raise ModelError(f"LogNormal prior needs a finite median > 0 and sigma > 0, got {self}")

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        return (self.median * math.exp(-z * self.sigma), self.median * math.exp(z * self.sigma))


@dataclass(frozen=True)
class HalfNormal:
    """Prior on a standard deviation (the variability of a random effect): |Normal(0, scale)|."""

    scale: float

    def __post_init__(self):
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ModelError(f"HalfNormal prior needs scale > 0, got {self}")


@dataclass(frozen=True)
class Parameter:
    """A positive structural parameter (estimated on the log scale).

    typical:  typical (population) value in `unit`
    lower/upper: bounds for individual fits (default typical/1000 .. typical*1000)
    prior:    LogNormal prior for the population engine (default: median = typical, sigma 1)
    iiv:      default inter-individual variability (SD of the log-normal random effect);
              None = no random effect by default
    fixed:    never estimated (a constant of the model, e.g. a unit conversion)
    """

    name: str
    typical: float
    unit: str = "1"
    description: str = ""
    source: str = ""
    lower: float | None = None
    upper: float | None = None
    prior: LogNormal | None = None
    iiv: float | None = None
    fixed: bool = False

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ModelError(f"parameter name {self.name!r} is not a valid identifier")
        if not (self.typical > 0 and math.isfinite(self.typical)):
            raise ModelError(f"parameter {self.name}: typical value must be positive and finite "
                             f"(parameters are log-normal), got {self.typical}")
        lo, hi = self.bounds
        if not lo < self.typical < hi:
            raise ModelError(f"parameter {self.name}: typical value {self.typical} is outside its "
                             f"bounds [{lo}, {hi}]")
        if self.iiv is not None and not self.iiv > 0:
            raise ModelError(f"parameter {self.name}: iiv must be a positive SD or None")

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.lower if self.lower is not None else self.typical / 1000,
                self.upper if self.upper is not None else self.typical * 1000)

    @property
    def prior_or_default(self) -> LogNormal:
        return self.prior or LogNormal(self.typical, 1.0)


@dataclass(frozen=True)
class Observation:
    """How an analyte is predicted from the states, with its residual-error model.

    error: 'log'          additive on the log scale: ln y ~ N(ln f, sigma)
           'proportional' y ~ N(f, sigma*f)
           'additive'     y ~ N(f, additive)                 (natural scale)
           'combined'     y ~ N(f, sqrt(additive^2 + (sigma*f)^2))   (nlmixr2's combined2, NONMEM's usual)
           'combined1'    y ~ N(f, additive + sigma*f)               (Monolix's default 'combined1')
    sigma, additive: typical residual SDs; both are estimated by the population engine, each
    with a LogNormal prior (default: median the typical value, sigma 0.5).
    lloq: the assay's lower limit of quantification, used when simulating (default: the
    analyte catalogue's; else values below 0 are censored at 0 for the natural-scale models).
    Values below the LLOQ enter the likelihood as censored (M3).
    """

    analyte: str
    observe: Callable
    unit: str
    error: str = "log"
    sigma: float = 0.3
    additive: float = 0.0
    source: str = ""
    sigma_prior: LogNormal | None = None
    additive_prior: LogNormal | None = None
    lloq: float | None = None

    def __post_init__(self):
        if self.error not in ERROR_MODELS:
            raise ModelError(f"observation {self.analyte}: error model {self.error!r} is not one of "
                             f"{', '.join(ERROR_MODELS)}")
        if self.has_sigma and not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ModelError(f"observation {self.analyte}: the {self.error} error model needs sigma > 0")
        if self.has_additive and not (self.additive > 0 and math.isfinite(self.additive)):
            raise ModelError(f"observation {self.analyte}: the {self.error} error model needs additive > 0 "
                             f"(the additive SD in {self.unit})")

    @property
    def has_sigma(self) -> bool:
        """A log-scale or proportional SD is part of the error model."""
        return self.error in ("log", "proportional", "combined", "combined1")

    @property
    def has_additive(self) -> bool:
        """An additive SD (in the analyte's unit) is part of the error model."""
        return self.error in ("additive", "combined", "combined1")

    @property
    def sigma_prior_or_default(self) -> LogNormal:
        return self.sigma_prior or LogNormal(self.sigma, 0.5)

    @property
    def additive_prior_or_default(self) -> LogNormal:
        return self.additive_prior or LogNormal(self.additive, 0.5)

    def describe(self) -> str:
        """'log-additive, sigma 0.5', 'combined: additive 0.2 mg/L + proportional 0.1', ..."""
        if self.error == "log":
            return f"additive on the log scale, SD {self.sigma:g}"
        if self.error == "proportional":
            return f"proportional, SD {self.sigma:g} (fraction of the prediction)"
        if self.error == "additive":
            return f"additive, SD {self.additive:g} {self.unit}"
        if self.error == "combined1":
            return f"combined1: SD = {self.additive:g} {self.unit} + {self.sigma:g} x prediction"
        return f"combined: SD = sqrt(({self.additive:g} {self.unit})^2 + ({self.sigma:g} x prediction)^2)"


@dataclass(frozen=True)
class Dosing:
    """A state that receives doses, and how.

    target:          name of the ODE state a dose adds to
    unit:            the amount unit of that state's doses (default: the module's dose_unit);
                     a dose given in another unit of the same kind is converted (pint)
    bioavailability: F(p, c, m), the fraction of the amount that reaches the target (default 1)
    lag:             lag time(p, c, m) between the recorded dose time and its arrival (default 0)
    A dose adds F*amount to the target (bolus), or F*amount spread over its duration (infusion).
    """

    target: str
    unit: str | None = None
    bioavailability: Callable | None = None
    lag: Callable | None = None


@dataclass(frozen=True)
class Module:
    """One part of a model. Modules compose by name: 'antigen_driven+cytokines'."""

    name: str
    description: str
    parameters: tuple[Parameter, ...]
    kind: str = "ck"  # 'ck' (cellular kinetics) or 'pd'
    initial: Callable | None = None
    rhs: Callable | None = None
    closed_form: Callable | None = None
    signals: Mapping[str, Callable] = field(default_factory=dict)
    observations: tuple[Observation, ...] = ()
    requires: tuple[str, ...] = ()  # signals needed from upstream modules
    references: tuple[str, ...] = ()
    time_unit: str = "d"  # the unit of t, of rates and of every time parameter
    dose_unit: str = "cells"  # the unit of c.dose and of doses to `dosing` targets
    dosing: tuple[Dosing, ...] = ()  # states receiving doses; the first is the default target
    covariates: tuple[str, ...] = ()  # further covariates read as c.NAME (data columns)
    # the module (same file, or built-in) whose fast states this one holds at quasi-steady state:
    # a fit of a model with it checks the reduction against that module's ODEs
    approximates: str | None = None

    def __post_init__(self):
        if self.time_unit not in TIME_UNITS:
            raise ModelError(f"module {self.name}: time_unit {self.time_unit!r} is not one of "
                             f"{', '.join(TIME_UNITS)}")
        for name in self.covariates:
            if not name.isidentifier() or name in COVARIATES:
                raise ModelError(f"module {self.name}: covariate {name!r} must be an identifier other than "
                                 f"the standard ones ({', '.join(COVARIATES)})")
        targets = [d.target for d in self.dosing]
        if len(set(targets)) != len(targets):
            raise ModelError(f"module {self.name}: a state is listed twice in dosing")
        if self.rhs is not None and self.initial is None:
            raise ModelError(f"module {self.name}: an ODE (rhs) needs initial states")
        if self.rhs is None and self.closed_form is None:
            raise ModelError(f"module {self.name}: give a right-hand side (rhs) or a closed form")
        names = [p.name for p in self.parameters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ModelError(f"module {self.name}: duplicate parameter(s) {', '.join(dupes)}")
        if self.kind not in ("ck", "pd"):
            raise ModelError(f"module {self.name}: kind must be 'ck' or 'pd'")
