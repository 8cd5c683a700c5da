"""Prior overrides by name, from Python, the command line or a TOML file.

    NAME                 a model parameter's typical value      LogNormal(median, sigma)
    omega_NAME           its inter-individual variability (SD)  HalfNormal(scale)
    sigma_ANALYTE        the log-scale or proportional residual LogNormal(median, sigma)
    sigma_add_ANALYTE    the additive residual SD               LogNormal(median, sigma)

On the command line: `--prior ka=LogNormal(1.5,0.5) --prior omega_ka=HalfNormal(1)`; in a
TOML file, a [priors] table of the same strings (or [median, sigma] for a LogNormal).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Mapping

from ..models import HalfNormal, LogNormal, Model, ModelError

Prior = LogNormal | HalfNormal
_FORMS = {"lognormal": (LogNormal, 2), "halfnormal": (HalfNormal, 1)}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_prior(text: str, name: str = "") -> Prior:
    """'LogNormal(1.5, 0.5)' or 'HalfNormal(1)'; ValueError naming the mistake and the forms."""
    match = re.fullmatch(rf"\s*(\w+)\s*\(\s*({_NUMBER})\s*(?:,\s*({_NUMBER})\s*)?\)\s*", str(text))
    form = _FORMS.get(match.group(1).lower()) if match else None
    where = f"prior {name}: " if name else "prior: "
    if form is None:
        raise ValueError(f"{where}{text!r} is not LogNormal(MEDIAN, SD) or HalfNormal(SCALE)")
    cls, n_args = form
    args = [float(a) for a in match.groups()[1:] if a is not None]
    if len(args) != n_args:
        raise ValueError(f"{where}{match.group(1)} takes {n_args} number(s), got {len(args)} in {text!r}")
    try:
        return cls(*args)
    except ModelError as exc:
        raise ValueError(f"{where}{exc}") from None


def parse_assignment(text: str) -> tuple[str, Prior]:
    """'NAME=LogNormal(MEDIAN,SD)' -> (name, prior)."""
    name, sep, value = str(text).partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--prior {text!r} is not NAME=LogNormal(MEDIAN,SD) or NAME=HalfNormal(SCALE)")
    return name.strip(), parse_prior(value, name.strip())


def prior_value(name: str, value) -> Prior:
    """A prior from a TOML value: a string as `parse_prior`, or [median, sigma] (LogNormal)."""
    if isinstance(value, (LogNormal, HalfNormal)):
        return value
    if isinstance(value, str):
        return parse_prior(value, name)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        try:
            return LogNormal(float(value[0]), float(value[1]))
        except ModelError as exc:
            raise ValueError(f"prior {name}: {exc}") from None
    raise ValueError(f"prior {name}: {value!r} is not \"LogNormal(MEDIAN, SD)\", \"HalfNormal(SCALE)\" or "
                     "[MEDIAN, SD]")


def load_priors(path: str | Path) -> dict[str, Prior]:
    """The [priors] table of a TOML file (or its top level when it has no such table)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the prior file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    table = data.get("priors", data)
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [priors] must be a table of NAME = \"LogNormal(MEDIAN, SD)\"")
    return {str(k): prior_value(f"{k} ({path})", v) for k, v in table.items()}


def check_priors(model: Model, iiv, priors: Mapping[str, Prior]) -> dict[str, Prior]:
    """The priors, each checked against the model: its name and the kind of prior it needs."""
    out = {}
    observations = model.observations
    for name, prior in dict(priors).items():
        prior = prior_value(name, prior)
        if name in model.parameter_names:
            kind, ok = "a typical value", isinstance(prior, LogNormal)
            if model.parameter(name).fixed:
                raise ValueError(f"prior {name}: the parameter is a fixed constant of model {model.name}")
        elif name.startswith("omega_") and name[6:] in model.parameter_names:
            kind, ok = "a variability SD", isinstance(prior, HalfNormal)
            if name[6:] not in iiv:
                raise ValueError(f"prior {name}: {name[6:]} has no inter-individual variability in this fit "
                                 f"(variability on: {', '.join(iiv) or 'none'})")
        elif name.startswith("sigma_add_") and name[10:] in observations:
            kind, ok = "an additive residual SD", isinstance(prior, LogNormal)
            if not observations[name[10:]].has_additive:
                raise ValueError(f"prior {name}: the error model of {name[10:]} has no additive part")
        elif name.startswith("sigma_") and name[6:] in observations:
            kind, ok = "a residual SD", isinstance(prior, LogNormal)
            if not observations[name[6:]].has_sigma:
                raise ValueError(f"prior {name}: the error model of {name[6:]} is additive; use sigma_add_{name[6:]}")
        else:
            raise ValueError(f"prior {name}: model {model.name} has no parameter {name!r}; name a parameter "
                             f"({', '.join(model.parameter_names)}), omega_PARAMETER, sigma_ANALYTE or "
                             "sigma_add_ANALYTE")
        if not ok:
            raise ValueError(f"prior {name}: {kind} takes a {'HalfNormal' if 'variability' in kind else 'LogNormal'} "
                             f"prior, not {type(prior).__name__}")
        out[name] = prior
    return out
