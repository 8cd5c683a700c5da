"""The pieces a model is declared with: parameters, observations, modules.

A *module* is one part of a model (a cellular-kinetic model, or a PD module such as
cytokines). Its right-hand side, initial states, closed forms, signals and observation
functions are plain Python functions over a math namespace `m` (m.exp, m.log, m.where,
...). pkpd traces them once with sympy and generates every executable form from the
same expressions (numpy for simulation and lmfit, exact Jacobians and compiled code for
the Bayesian engine), so the right-hand side is written once.

Function signatures (all arguments are attribute namespaces):
    initial(p, c, m)            -> {state: value at t = 0}   (c.dose in CAR+ cells)
    rhs(t, s, p, c, x, m)       -> {state: ds/dt}
    closed_form(t, p, c, x, m)  -> {state: value at t}       (instead of, or beside, rhs)
    signal(t, s, p, c, x, m)    -> value offered to downstream modules
    observe(t, s, p, c, x, m)   -> predicted value of an analyte
where s are states, p parameters, c covariates (dose, ld, bcma, cd20, weight) and x the
signals of upstream modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

ERROR_MODELS = ("log", "proportional", "combined")
COVARIATES = ("dose", "ld", "bcma", "cd20", "weight")


class ModelError(ValueError):
    """A model definition or composition that cannot work; the message names the part."""


@dataclass(frozen=True)
class LogNormal:
    """Prior on a positive parameter: log(value) ~ Normal(log(median), sigma)."""

    median: float
    sigma: float

    def __post_init__(self):
        if not (self.median > 0 and self.sigma > 0):
            raise ModelError(f"LogNormal prior needs median > 0 and sigma > 0, got {self}")

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        return (self.median * math.exp(-z * self.sigma), self.median * math.exp(z * self.sigma))


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

    error: 'log' (additive on the log scale: ln y ~ N(ln f, sigma)),
           'proportional' (y ~ N(f, sigma*f)),
           'combined' (y ~ N(f, sqrt(additive^2 + (sigma*f)^2))).
    Values below the LLOQ enter the likelihood as censored (M3).
    """

    analyte: str
    observe: Callable
    unit: str
    error: str = "log"
    sigma: float = 0.3
    additive: float = 0.0
    source: str = ""

    def __post_init__(self):
        if self.error not in ERROR_MODELS:
            raise ModelError(f"observation {self.analyte}: error model {self.error!r} is not one of "
                             f"{', '.join(ERROR_MODELS)}")
        if not self.sigma > 0:
            raise ModelError(f"observation {self.analyte}: sigma must be positive")
        if self.error == "combined" and not self.additive > 0:
            raise ModelError(f"observation {self.analyte}: a combined error model needs additive > 0")


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

    def __post_init__(self):
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
