"""A fit's run folder: everything needed to reopen the FitResult anywhere.

    posterior.nc       the DataTree (posterior, log-likelihood; provenance, the population
                       specification and the model's source text and hashes in its attrs)
    data.csv           the fitted cohort, NONMEM style (lossless)
    parameters.csv     the parameter table
    diagnostics.json   every diagnostic with its message
    model/             copies of the model's source files, for reading (loading uses the text
                       recorded in posterior.nc, checked against its hash)

`FitResult.save(folder)` writes it (`pkpd fit -o RUN`, each fit of `pkpd compare`);
`FitResult.load(folder)` reads it back: the model is rebuilt from the recorded source, so a run
of a user's model file reopens after the file was moved or deleted. Loading a run runs that
recorded model code, as loading the model file did: open only run folders you trust.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .._files import atomic_path, write_text
from ..models import Model, ModelError, ModelSource, modules_from_source
from .result import FitResult

RESULT_FILE = "posterior.nc"
DATA_FILE = "data.csv"


class RunError(ValueError):
    """A folder that is not (or no longer matches) a fit run."""


def model_record(model: Model) -> dict:
    """The attrs that let `rebuild_model` make the model again."""
    return {"model": model.name, "model_hash": model.hash,
            "model_sources": json.dumps([asdict(s) for s in model.sources]),
            "model_closed_forms": int(model.use_closed_forms),
            "model_overrides": json.dumps(dict(model.overrides))}


def rebuild_model(attrs, where: str) -> Model:
    """The fitted model from its recorded sources (each checked against its hash), then checked
    against the recorded model hash."""
    try:
        sources = [ModelSource(**s) for s in json.loads(attrs.get("model_sources", "[]"))]
    except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise RunError(f"{where}: its record of the model's source is damaged ({type(exc).__name__}); "
                       "re-run the fit, or pass the model: --model FILE (FitResult.load(folder, model=...))") from None
    name = attrs.get("model", "?")
    if not sources:
        raise RunError(f"{where}: the model {name!r} was built in Python, not loaded from a file, so its source "
                       "was not recorded; pass it: FitResult.load(folder, model=...)")
    try:
        modules = [modules_from_source(s) for s in sources]
        model = Model.compose(modules, use_closed_forms=bool(attrs.get("model_closed_forms", 1)), sources=sources)
        model = model.with_typical(**json.loads(attrs.get("model_overrides", "{}")))
    except ModelError as exc:
        raise RunError(f"{where}: cannot rebuild model {name!r} from its recorded source: {exc}") from exc
    _check_model(model, attrs, where)
    return model


def _check_model(model: Model, attrs, where: str) -> None:
    expected = attrs.get("model_hash")
    if expected is not None and model.hash != expected:
        raise RunError(f"{where}: model {model.name} is not the fitted one (hash {model.hash} != {expected}); "
                       "load the run without a model, or re-run the fit")


def save_run(result: FitResult, folder: str | Path) -> Path:
    """Write the run folder (every file atomically; posterior.nc last)."""
    from ..data.write import write_nonmem

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{folder} exists and is not a folder; give a new or existing folder for the run")
    folder.mkdir(parents=True, exist_ok=True)
    write_nonmem(result.cohort, folder / DATA_FILE)
    with atomic_path(folder / "parameters.csv") as tmp:
        result.parameter_table().to_csv(tmp, index=False)
    write_text(folder / "diagnostics.json", json.dumps([asdict(d) for d in result.diagnostics()], indent=2))
    for source in result.model.sources:
        write_text(folder / "model" / source.file.replace("builtin:", "builtin_"), source.text)
    with atomic_path(folder / RESULT_FILE) as tmp:
        result.tree.to_netcdf(tmp, engine="h5netcdf")
    return folder


def load_run(folder: str | Path, model: Model | None = None) -> FitResult:
    """Read a run folder; RunError names what is missing or inconsistent and how to fix it."""
    import xarray as xr

    from ..data import DataError, read_cohort
    from .engine import data_hash
    from .population import spec_from_record

    folder = Path(folder)
    posterior = folder / RESULT_FILE
    if not posterior.is_file():
        raise RunError(f"{folder}: no {RESULT_FILE}; give the folder written by `pkpd fit ... -o RUN` "
                       "(or a comparison's fits/<id> folder)")
    if not (folder / DATA_FILE).is_file():
        raise RunError(f"{folder}: no {DATA_FILE} (the fitted data); re-run the fit with this version of pkpd")
    try:
        with xr.open_datatree(posterior, engine="h5netcdf") as opened:  # closed again: the run stays movable
            tree = opened.load()
    except Exception as exc:  # h5py and xarray raise several types for a damaged file
        raise RunError(f"{posterior} cannot be read ({type(exc).__name__}: {exc}); it is damaged or "
                       "incomplete: re-run the fit") from None
    try:
        cohort = read_cohort(folder / DATA_FILE)
    except DataError as exc:
        raise RunError(f"{folder / DATA_FILE} is not readable as the fitted data: {exc}") from None
    expected = tree.attrs.get("data_hash")
    if expected and data_hash(cohort) != expected:
        raise RunError(f"{folder / DATA_FILE} is not the data {RESULT_FILE} was fitted to (data hash "
                       f"{data_hash(cohort)} != {expected}); re-run the fit")
    if model is None:
        model = rebuild_model(tree.attrs, str(posterior))
    else:
        _check_model(model, tree.attrs, str(posterior))
    try:
        spec = spec_from_record(model, json.loads(tree.attrs.get("spec", "{}")))
    except (TypeError, KeyError, AttributeError) as exc:
        raise RunError(f"{posterior}: its record of the population specification is damaged "
                       f"({type(exc).__name__}: {exc}); re-run the fit") from None
    except ValueError as exc:
        raise RunError(f"{posterior}: its population specification does not fit model {model.name}: {exc}") from None
    return FitResult(tree, model, spec, cohort)
