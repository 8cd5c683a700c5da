"""A fit run folder: the fit's result with the data it was fitted to, readable later.

    posterior.nc       the FitResult's DataTree (posterior, log-likelihood, provenance)
    data.csv           the fitted cohort, NONMEM style (lossless), so that posterior-predictive
                       checks and dose selection need nothing else
    parameters.csv     the parameter table
    diagnostics.json   every diagnostic with its message

`pkpd fit -o RUN` and each fit of `pkpd compare` write one; `load_run` reads it back and
rebuilds the model and the population specification from the provenance.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .._files import atomic_path, write_text
from ..data.cohort import Cohort
from ..models import LogNormal, Model, ModelError, load
from ..simulate.compiled import Tolerances
from .population import PopulationSpec
from .result import FitResult

RESULT_FILE = "posterior.nc"
DATA_FILE = "data.csv"


class RunError(ValueError):
    """A folder that is not (or no longer matches) a fit run."""


@dataclass(frozen=True)
class Run:
    folder: Path
    result: FitResult
    cohort: Cohort
    model: Model
    spec: PopulationSpec


def write_run(folder: str | Path, result: FitResult, cohort: Cohort) -> Path:
    """Write the run folder (every file atomically; posterior.nc last)."""
    from ..data.write import write_nonmem

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_nonmem(cohort, folder / DATA_FILE)
    with atomic_path(folder / "parameters.csv") as tmp:
        result.parameter_table().to_csv(tmp, index=False)
    write_text(folder / "diagnostics.json", json.dumps([asdict(d) for d in result.diagnostics()], indent=2))
    result.save(folder / RESULT_FILE)
    return folder


def spec_of(result: FitResult, model: Model) -> PopulationSpec:
    """The population specification a fit ran with, from its provenance."""
    saved = json.loads(result.tree.attrs.get("spec", "{}"))
    steps = saved.get("steps")
    return PopulationSpec.default(
        model, iiv=saved.get("iiv"), fixed_effects=saved.get("fixed_effects"),
        covariates=saved.get("covariates", ()),
        priors={k: LogNormal(*v) for k, v in saved.get("priors", {}).items()},
        correlated=bool(saved.get("correlated", False)), censoring=saved.get("censoring", "M3"),
        steps=_solver(steps))


def _solver(saved) -> Tolerances | None:
    """The solver settings as recorded by the fit's provenance."""
    if isinstance(saved, dict):
        return Tolerances(**{k: v for k, v in saved.items() if k != "solver"})
    return None


def load_run(folder: str | Path) -> Run:
    """Read a run folder; RunError names what is missing or inconsistent and how to fix it."""
    from ..data import read_cohort
    from .engine import data_hash

    folder = Path(folder)
    posterior = folder / RESULT_FILE
    if not posterior.is_file():
        raise RunError(f"{folder}: no {RESULT_FILE}; give the folder written by `pkpd fit ... -o RUN` "
                       "(or a comparison's fits/<id> folder)")
    if not (folder / DATA_FILE).is_file():
        raise RunError(f"{folder}: no {DATA_FILE} (the fitted data); re-run the fit with this version of pkpd")
    result = FitResult.load(posterior)
    cohort = read_cohort(folder / DATA_FILE)
    expected = result.tree.attrs.get("data_hash")
    if expected and data_hash(cohort) != expected:
        raise RunError(f"{folder / DATA_FILE} is not the data {RESULT_FILE} was fitted to (data hash "
                       f"{data_hash(cohort)} != {expected}); re-run the fit")
    name = result.model_name
    try:
        model = load(name)
    except ModelError as exc:
        raise RunError(f"{posterior}: cannot rebuild its model {name!r}: {exc}") from exc
    if result.tree.attrs.get("model_hash") not in (None, model.hash):
        raise RunError(f"model {name} has changed since the fit (hash {model.hash} != "
                       f"{result.tree.attrs.get('model_hash')}); re-run the fit with the current model")
    return Run(folder, result, cohort, model, spec_of(result, model))
