"""A Model: modules composed into one system, traced once into sympy expressions.

Composition is by name, cellular kinetics first: 'antigen_driven+cytokines+immunoglobulins'.
Each module sees the signals offered by the modules before it; a missing signal, parameter
or state is a ModelError naming the module and the name. The traced expressions are the
single source of every executable form (pkpd.models.codegen).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Mapping, Sequence

import sympy as sp

from .spec import COVARIATES, Dosing, Module, ModelError, Observation, Parameter


class Namespace:
    """Attribute access to named sympy expressions, with errors that name the owner."""

    def __init__(self, values: Mapping[str, object], owner: str, what: str):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_what", what)

    def __getattr__(self, name):
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise ModelError(f"module {self._owner} uses {self._what} {name!r}, which is not defined; "
                         f"available: {', '.join(values) or 'none'}")

    def __getitem__(self, name):
        return self.__getattr__(name)


class SymbolicMath:
    """The math namespace `m` seen by model functions when they are traced."""

    exp = staticmethod(sp.exp)
    log = staticmethod(sp.log)
    sqrt = staticmethod(sp.sqrt)
    pi = sp.pi

    @staticmethod
    def where(condition, if_true, if_false):
        return sp.Piecewise((if_true, condition), (if_false, True))

    @staticmethod
    def sigmoid(z):
        return 1 / (1 + sp.exp(-z))

    @staticmethod
    def hill(x, ec50, h=1):
        return x**h / (x**h + ec50**h)

    @staticmethod
    def maximum(a, b):
        return sp.Max(a, b)

    @staticmethod
    def minimum(a, b):
        return sp.Min(a, b)


M = SymbolicMath()


@dataclass(frozen=True)
class ModelSource:
    """The text of the file a module was defined in, so that a fit result can rebuild its model
    after the file has changed or gone (`pkpd.models.library.modules_from_source`)."""

    module: str      # the module's name
    file: str        # file name as loaded ('my_model.py'; built-ins: 'builtin:NAME.py')
    text: str
    sha256: str

    @classmethod
    def of(cls, module: str, file: str, text: str) -> "ModelSource":
        return cls(module, file, text, hashlib.sha256(text.encode()).hexdigest())


@dataclass(frozen=True, eq=False)
class Model:
    """Composed model. Build with `pkpd.models.load('a+b')` or `Model.compose([...])`."""

    name: str
    modules: tuple[Module, ...]
    use_closed_forms: bool = True
    overrides: Mapping[str, float] = field(default_factory=dict)
    sources: tuple[ModelSource, ...] = ()

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def compose(cls, modules: Sequence[Module], use_closed_forms: bool = True,
                sources: Sequence[ModelSource] = ()) -> "Model":
        if not modules:
            raise ModelError("a model needs at least one module")
        ck = [m for m in modules if m.kind == "ck"]
        if len(ck) != 1 or modules[0].kind != "ck":
            raise ModelError("a model is one cellular-kinetic module followed by PD modules; got "
                             + "+".join(f"{m.name}({m.kind})" for m in modules))
        names = [m.name for m in modules]
        if len(set(names)) != len(names):
            raise ModelError(f"module listed twice in {'+'.join(names)}")
        units = {m.time_unit for m in modules}
        if len(units) > 1:
            raise ModelError("the modules of a model must share one time unit; got "
                             + ", ".join(f"{m.name}: {m.time_unit}" for m in modules))
        model = cls("+".join(names), tuple(modules), use_closed_forms, {}, tuple(sources))
        model.symbols  # trace now, so that errors surface at construction
        _check_units(model)
        return model

    def with_typical(self, **values: float) -> "Model":
        """A copy with other typical values (e.g. for a variant or a sensitivity analysis)."""
        unknown = sorted(set(values) - set(self.parameter_names))
        if unknown:
            raise ModelError(f"model {self.name} has no parameter(s) {', '.join(unknown)}")
        return replace(self, overrides={**self.overrides, **values})

    def ode(self) -> "Model":
        """The same model with every module solved as an ODE (closed forms ignored)."""
        return Model.compose(self.modules, use_closed_forms=False, sources=self.sources).with_typical(
            **self.overrides)

    # --- units and doses -------------------------------------------------------------------
    @property
    def time_unit(self) -> str:
        """The unit of t (and of every time and rate parameter): 'h', 'd', ..."""
        return self.modules[0].time_unit

    @property
    def dose_unit(self) -> str:
        """The unit of c.dose and of doses to the default target."""
        return self.default_dosing.unit if self.default_dosing else self.modules[0].dose_unit

    @cached_property
    def dosing(self) -> tuple[Dosing, ...]:
        """The states that receive doses as events (each with its unit filled in); empty when
        the model takes a single dose at t = 0 through c.dose."""
        out = []
        for module in self.modules:
            if module.closed_form is not None and (self.use_closed_forms or module.rhs is None):
                continue  # solved in closed form: its states are not integrated
            out += [replace(d, unit=d.unit or module.dose_unit) for d in module.dosing]
        return tuple(out)

    @property
    def default_dosing(self) -> Dosing | None:
        return self.dosing[0] if self.dosing else None

    @property
    def covariate_names(self) -> list[str]:
        """Covariates the model functions see as c.NAME: the standard ones, then the declared."""
        extra = [c for m in self.modules for c in m.covariates]
        return list(COVARIATES) + list(dict.fromkeys(extra))

    # --- declared content ------------------------------------------------------------------
    @cached_property
    def parameters(self) -> tuple[Parameter, ...]:
        seen, out = {}, []
        for module in self.modules:
            for p in module.parameters:
                if p.name in seen:
                    raise ModelError(f"parameter {p.name!r} is declared by both {seen[p.name]} and "
                                     f"{module.name}; rename one")
                seen[p.name] = module.name
                out.append(replace(p, typical=self.overrides[p.name]) if p.name in self.overrides else p)
        return tuple(out)

    @property
    def parameter_names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise ModelError(f"model {self.name} has no parameter {name!r}; it has "
                         f"{', '.join(self.parameter_names)}")

    @property
    def typical(self) -> dict[str, float]:
        return {p.name: p.typical for p in self.parameters}

    @cached_property
    def observations(self) -> dict[str, Observation]:
        out = {}
        for module in self.modules:
            for obs in module.observations:
                if obs.analyte in out:
                    raise ModelError(f"analyte {obs.analyte} is observed by two modules")
                out[obs.analyte] = obs
        return out

    @property
    def analytes(self) -> list[str]:
        return list(self.observations)

    @property
    def states(self) -> list[str]:
        return list(self.symbols["states"])

    @property
    def is_closed_form(self) -> bool:
        return not self.symbols["states"]

    @cached_property
    def hash(self) -> str:
        """Fingerprint of the traced equations and typical values (for provenance)."""
        s = self.symbols
        text = repr((self.name, [str(e) for e in s["rhs"]], [str(e) for e in s["initial"]],
                     {k: str(v) for k, v in s["observe"].items()}, sorted(self.typical.items()),
                     [(d["state"], str(d["bioavailability"]), str(d["lag"]), d["unit"]) for d in s["dosing"]],
                     self.covariate_names, self.time_unit,
                     [(o.analyte, o.error, o.sigma, o.additive) for o in self.observations.values()]))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # --- tracing ---------------------------------------------------------------------------
    @cached_property
    def symbols(self) -> dict:
        """Sympy symbols and expressions of the whole system.

        keys: t, params (name -> Symbol), covariates, states (name -> Symbol, ODE states only),
        rhs (list aligned with states), initial (list), closed (name -> expr of t),
        signals (name -> expr), observe (analyte -> expr), baseline_observe (analyte -> expr at
        the pre-dose state), dosing (list of {state: index, unit, bioavailability, lag}).
        """
        t = sp.Symbol("t", real=True)
        params = {p.name: sp.Symbol(p.name, positive=True) for p in self.parameters}
        covs = {c: sp.Symbol(f"cov_{c}", real=True) for c in self.covariate_names}
        states: dict[str, sp.Symbol] = {}
        rhs, initial, closed, signals, observe = [], [], {}, {}, {}
        for module in self.modules:
            p = Namespace({q.name: params[q.name] for q in module.parameters}, module.name, "parameter")
            c = Namespace(covs, module.name, "covariate")
            missing = [r for r in module.requires if r not in signals]
            if missing:
                raise ModelError(f"module {module.name} needs signal(s) {', '.join(missing)} from an "
                                 f"upstream module, which {self.modules[0].name} does not offer "
                                 f"(it offers {', '.join(signals) or 'none'})")
            x = Namespace(dict(signals), module.name, "signal")
            if module.closed_form is not None and (self.use_closed_forms or module.rhs is None):
                forms = _call(module.closed_form, module, "closed_form", t, p, c, x, M)
                closed.update({name: sp.sympify(expr) for name, expr in forms.items()})
            else:
                init = _call(module.initial, module, "initial", p, c, M)
                new = {name: sp.Symbol(f"y_{name}", real=True) for name in init}
                clash = sorted(set(new) & (set(states) | set(closed)))
                if clash:
                    raise ModelError(f"module {module.name} redefines state(s) {', '.join(clash)}")
                states.update(new)
                s = Namespace({**closed, **states}, module.name, "state")
                derivs = _call(module.rhs, module, "rhs", t, s, p, c, x, M)
                if set(derivs) != set(init):
                    raise ModelError(f"module {module.name}: rhs gives derivatives of "
                                     f"{sorted(derivs)} but initial states are {sorted(init)}")
                rhs.extend(sp.sympify(derivs[name]) for name in init)
                initial.extend(sp.sympify(init[name]) for name in init)
            s = Namespace({**closed, **states}, module.name, "state")
            for name, fn in module.signals.items():
                signals[name] = sp.sympify(_call(fn, module, f"signal {name}", t, s, p, c, x, M))
            for obs in module.observations:
                observe[obs.analyte] = sp.sympify(_call(obs.observe, module, f"observation {obs.analyte}",
                                                        t, s, p, c, x, M))
        # before the first dose: ODE states at their initial values without it (dose 0)
        at_baseline = {states[n]: e.subs(covs["dose"], 0) for n, e in zip(states, initial)}
        baseline = {a: e.subs(at_baseline) for a, e in observe.items()}
        dosing = []
        for module in self.modules:
            if module.closed_form is not None and (self.use_closed_forms or module.rhs is None):
                continue
            p = Namespace({q.name: params[q.name] for q in module.parameters}, module.name, "parameter")
            c = Namespace(covs, module.name, "covariate")
            for d in module.dosing:
                if d.target not in states:
                    raise ModelError(f"module {module.name}: dosing target {d.target!r} is not one of its ODE "
                                     f"states ({', '.join(states) or 'none'})")
                f = _call(d.bioavailability, module, f"bioavailability of {d.target}", p, c, M) \
                    if d.bioavailability else sp.Integer(1)
                lag = _call(d.lag, module, f"lag of {d.target}", p, c, M) if d.lag else sp.Integer(0)
                dosing.append({"state": list(states).index(d.target), "name": d.target,
                               "unit": d.unit or module.dose_unit, "bioavailability": sp.sympify(f),
                               "lag": sp.sympify(lag)})
        return {"t": t, "params": params, "covariates": covs, "states": states, "rhs": rhs,
                "initial": initial, "closed": closed, "signals": signals, "observe": observe,
                "baseline_observe": baseline, "dosing": dosing}

    def parameters_affecting(self, analytes) -> set[str]:
        """Names of the parameters on which the predictions of `analytes` depend (through the
        observation functions, the states they read, and the states those depend on)."""
        s = self.symbols
        states = list(s["states"].values())
        depends = {y: s["rhs"][i].free_symbols | s["initial"][i].free_symbols for i, y in enumerate(states)}
        for d in s["dosing"]:  # a dose's bioavailability and lag act on its target state
            depends[states[d["state"]]] |= d["bioavailability"].free_symbols | d["lag"].free_symbols
        reached: set = set()
        todo = set()
        for a in analytes:
            todo |= s["observe"][a].free_symbols | s["baseline_observe"][a].free_symbols
        while todo:
            symbol = todo.pop()
            if symbol not in reached:
                reached.add(symbol)
                todo |= depends.get(symbol, set()) - reached
        return {name for name, symbol in s["params"].items() if symbol in reached}

    def describe(self) -> str:
        form = "closed form" if self.is_closed_form else f"{len(self.states)}-state ODE"
        lines = [f"model {self.name} ({form}; time unit {self.time_unit}; t = time since the first dose)"]
        for module in self.modules:
            lines.append(f"  {module.name}: {module.description}")
        if self.dosing:
            for d in self.symbols["dosing"]:
                extra = [f"F = {d['bioavailability']}" if d["bioavailability"] != 1 else "",
                         f"lag = {d['lag']}" if d["lag"] != 0 else ""]
                lines.append(f"  doses ({d['unit']}) to state {d['name']}"
                             + ("" if d is not self.symbols["dosing"][0] else " (default target)")
                             + "".join(f"; {e}" for e in extra if e))
        else:
            lines.append(f"  one dose at t = 0, seen as c.dose ({self.dose_unit})")
        extra = self.covariate_names[len(COVARIATES):]
        if extra:
            lines.append(f"  covariates from the data: {', '.join(extra)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, parameters={len(self.parameters)}, states={self.states})"


def _tracing_hint(exc: Exception) -> str:
    """What to write instead, for the usual reasons a model function cannot be traced."""
    text = str(exc)
    if "truth value of Relational" in text:
        return ("; the equations are traced symbolically, so write a condition with the last argument "
                "m: m.where(CONDITION, VALUE_IF_TRUE, VALUE_IF_FALSE) instead of if/else, min or max")
    if "ufunc" in text or "has no callable" in text:
        return "; use the functions of the last argument m (m.exp, m.log, m.sqrt, ...) instead of numpy's"
    return ""


def _call(fn, module: Module, what: str, *args):
    try:
        out = fn(*args)
    except ModelError:
        raise
    except Exception as exc:  # a user's model function failing while traced
        raise ModelError(f"module {module.name}: {what} failed while being traced: "
                         f"{type(exc).__name__}: {exc}{_tracing_hint(exc)}") from exc
    if what in ("initial", "rhs", "closed_form") and not isinstance(out, Mapping):
        raise ModelError(f"module {module.name}: {what} must return a dict of state -> expression")
    return out


def _check_units(model: Model) -> None:
    """Every parameter unit is one pint reads, and a time in it is the model's time unit
    (a rate in 1/d in a model whose t is in hours would be wrong by 24x)."""
    from ..units import UnitError, dose_unit, parse_unit, time_unit_name

    expected = time_unit_name(model.time_unit)
    for p in model.parameters:
        try:
            quantity = parse_unit(p.unit)
        except UnitError:
            raise ModelError(f"parameter {p.name}: unit {p.unit!r} is not a unit pint reads; write it as e.g. "
                             "1/h, L/h, mg/L, cells/uL ('1' when dimensionless)") from None
        times = {str(name) for name, _ in quantity.unit_items() if time_unit_name(str(name)) is not None}
        wrong = sorted(name for name in times if time_unit_name(name) != expected)
        if wrong:
            raise ModelError(f"parameter {p.name}: unit {p.unit!r} uses {', '.join(wrong)} but model {model.name} "
                             f"works in {model.time_unit} (time_unit of its modules); express it per "
                             f"{model.time_unit} (and its value accordingly)")
    for d in model.dosing:
        if dose_unit(d.unit) is None:
            raise ModelError(f"model {model.name}: dose unit {d.unit!r} of state {d.target} is not an amount "
                             "unit (cells, mg, ug, mmol, IU, ...)")

