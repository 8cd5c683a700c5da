"""The run specification of a model comparison (TOML), validated with located messages.

    [run]
    name = "ck-models"
    seed = 20261122            # every fit's seed derives from this and the fit's id
    chains = 4
    draws = 1000
    tune = 1000
    max_divergences = 50       # a fit with more divergent transitions is recorded as failed
    target_accept = 0.8        # NUTS target acceptance; 0.9 or 0.95 where fits report divergences
    max_refits = 10            # per fit: subjects whose integrated Pareto k stays above 0.7 are
                               # refitted without them (exact LOO), the worst first; 0: none
    loo_samples = 400          # importance samples per subject and draw of the integrated LOO

    [[datasets]]
    name = "example"
    path = "../data/example_nonmem.csv"     # relative to this file
    analytes = ["transgene"]                # optional: fit every model to these analytes only

    [[models]]
    name = "antigen_driven"                 # label in the leaderboard (default: the model)
    model = "antigen_driven"                # built-in name, composition, or a model file
                                            # (relative to this file, like dataset paths)
    iiv = ["rho", "alpha", "fblood"]        # optional
    fixed_effects = ["lag"]                 # optional: estimated without variability
    priors = { rho = [1.3, 0.3], omega_rho = "HalfNormal(0.5)" }   # optional: as pkpd.fit.priors
    variants = { base = [], ld = ["rho~lymphodepletion"] }   # optional covariate variants

Every dataset x model x variant is one fit, with id DATASET/MODEL/VARIANT. Each fit's
`digest` hashes everything its result depends on (the data file's bytes, the model's source,
covariates, variability, priors, sampler settings and seed): a re-run refits exactly the fits
whose digest changed. Datasets are read and checked when the spec is loaded, so a data error or
an unknown covariate stops the run before any fit starts.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..models import ModelError, load
from ..fit.population import DERIVED_COVARIATES, CovariateEffect
from ..fit.priors import check_priors, prior_value

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


class SpecError(ValueError):
    """Every problem of a spec file, each located by its key path."""

    def __init__(self, path, problems: list[str]):
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s) in the run specification:\n"
                         + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    analytes: tuple[str, ...] | None = None
    sha256: str = ""  # of the file's bytes
    covariates: tuple[str, ...] = ()  # the subject covariates the file carries


@dataclass(frozen=True)
class FitSpec:
    """One fit of the comparison."""

    id: str
    dataset: Dataset
    label: str
    model: str
    variant: str
    covariates: tuple[str, ...] = ()
    iiv: tuple[str, ...] | None = None
    fixed_effects: tuple[str, ...] = ()
    priors: tuple[tuple[str, object], ...] = ()  # (name, LogNormal or HalfNormal)
    chains: int = 4
    draws: int = 1000
    tune: int = 1000
    seed: int = 0
    max_divergences: int = 50
    target_accept: float = 0.8
    model_sha256: str = ""  # of the model's source (files and built-in modules)
    max_refits: int = 10    # exact leave-one-subject-out refits at most (not part of the digest)
    loo_samples: int = 400  # importance samples of the integrated LOO (not part of the digest)

    @property
    def directory(self) -> str:
        return self.id.replace("/", "__")

    @property
    def digest(self) -> str:
        """SHA-256 of everything the fit's result depends on: a re-run refits when it changes."""
        record = {"dataset": [str(self.dataset.path), self.dataset.sha256, list(self.dataset.analytes or ())],
                  "model": [self.model, self.model_sha256], "covariates": list(self.covariates),
                  "iiv": None if self.iiv is None else list(self.iiv),
                  **({"fixed_effects": list(self.fixed_effects)} if self.fixed_effects else {}),
                  "priors": [[name, repr(prior)] for name, prior in self.priors],
                  "sampler": [self.chains, self.draws, self.tune, self.seed, self.max_divergences,
                              self.target_accept]}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class SearchSpec:
    """A stepwise covariate search on one model and dataset (pkpd.compare.search)."""

    model: str                    # the [[models]] name whose settings the search fits use
    dataset: str
    candidates: tuple[str, ...]   # relations PARAMETER~COVARIATE[:FORM]
    forward: float = 2.0          # include when the ELPD gain exceeds forward x its SE
    backward: float = 2.0         # drop when removal costs less than backward x its SE


@dataclass(frozen=True)
class RunSpec:
    name: str
    source: Path
    text: str
    fits: tuple[FitSpec, ...] = field(default=())
    search: SearchSpec | None = None
    seed: int = 0


def derived_seed(seed: int, fit_id: str) -> int:
    """A seed from the run's seed and the fit's id: independent of workers and order."""
    digest = int(hashlib.sha256(fit_id.encode()).hexdigest()[:16], 16)
    return int(np.random.SeedSequence([int(seed), digest]).generate_state(1)[0])


def load_spec(path: str | Path) -> RunSpec:
    """Read and validate a TOML spec; raise SpecError listing every problem."""
    path = Path(path)
    if not path.exists():
        raise SpecError(path, [f"file {path} does not exist"])
    if path.is_dir():
        raise SpecError(path, [f"{path} is a folder: give the spec file (TOML)"])
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(path, [f"the file is not UTF-8 text (byte {exc.start}): save it as UTF-8"]) from exc
    except OSError as exc:
        raise SpecError(path, [f"cannot read the file: {exc.strerror}"]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, [f"not valid TOML: {exc}"]) from exc
    problems: list[str] = []
    run = raw.get("run", {})
    if not isinstance(run, dict):
        problems.append("[run] must be a table")
        run = {}
    unknown = sorted(set(raw) - {"run", "datasets", "models", "search"})
    if unknown:
        problems.append(f"unknown top-level key(s) {', '.join(unknown)}: use [run], [[datasets]], [[models]], [search]")
    settings = {}
    for key, default, minimum, maximum in (("chains", 4, 1, 64), ("draws", 1000, 10, 100_000),
                                           ("tune", 1000, 10, 100_000), ("seed", 0, 0, 2**32 - 1),
                                           ("max_divergences", 50, 0, 10**9), ("max_refits", 10, 0, 10_000),
                                           ("loo_samples", 400, 20, 100_000)):
        value = run.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
            problems.append(f"run.{key} must be an integer from {minimum} to {maximum}, not {value!r}")
            value = default
        settings[key] = value
    target_accept = run.get("target_accept", 0.8)
    if not isinstance(target_accept, (int, float)) or isinstance(target_accept, bool) or not 0 < target_accept < 1:
        problems.append(f"run.target_accept must be a number between 0 and 1 (e.g. 0.9), not {target_accept!r}")
        target_accept = 0.8
    extra = sorted(set(run) - {"name", "chains", "draws", "tune", "seed", "max_divergences", "target_accept",
                               "max_refits", "loo_samples"})
    if extra:
        problems.append(f"unknown key(s) run.{', run.'.join(extra)}")
    name = run.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"run.name must be a name of letters, digits, _ . - (got {name!r})")
        name = path.stem
    datasets = _datasets(raw.get("datasets"), path, problems)
    models = _models(raw.get("models"), problems, path.parent, datasets)
    search = _search(raw.get("search"), models, datasets, problems) if models and datasets else None
    if problems:
        raise SpecError(path, problems)
    fits = []
    for ds in datasets:
        for m in models:
            for variant, covariates in m["variants"].items():
                fit_id = f"{ds.name}/{m['name']}/{variant}"
                fits.append(FitSpec(id=fit_id, dataset=ds, label=m["name"], model=m["model"], variant=variant,
                                    covariates=tuple(covariates), iiv=m["iiv"], priors=m["priors"],
                                    fixed_effects=m["fixed_effects"],
                                    chains=settings["chains"], draws=settings["draws"], tune=settings["tune"],
                                    seed=derived_seed(settings["seed"], fit_id),
                                    max_divergences=settings["max_divergences"], target_accept=float(target_accept),
                                    model_sha256=m["sha256"], max_refits=settings["max_refits"],
                                    loo_samples=settings["loo_samples"]))
    return RunSpec(str(name), path, text, tuple(fits), search, settings["seed"])


def _datasets(entries, path: Path, problems: list[str]) -> list[Dataset]:
    if not isinstance(entries, list) or not entries:
        problems.append("at least one [[datasets]] entry is needed (name, path)")
        return []
    out, seen = [], set()
    for i, entry in enumerate(entries, start=1):
        where = f"datasets[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be a table")
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{where}.name must be a name of letters, digits, _ . - (got {name!r})")
            continue
        if name in seen:
            problems.append(f"{where}.name {name!r} is used twice")
        seen.add(name)
        file = entry.get("path")
        if not isinstance(file, str):
            problems.append(f"{where}.path is missing (the data file, relative to the spec)")
            continue
        resolved = (path.parent / file).resolve()
        if not resolved.is_file():
            problems.append(f"{where}.path: {resolved} does not exist (paths are relative to the spec)"
                            if not resolved.exists() else f"{where}.path: {resolved} is not a file")
            continue
        analytes = entry.get("analytes")
        if analytes is not None and (not isinstance(analytes, list) or not all(isinstance(a, str) for a in analytes)):
            problems.append(f"{where}.analytes must be a list of analyte names")
            analytes = None
        extra = sorted(set(entry) - {"name", "path", "analytes"})
        if extra:
            problems.append(f"{where}: unknown key(s) {', '.join(extra)}")
        checked = _check_dataset(resolved, where, problems)
        if checked is None:
            continue
        cohort, sha256 = checked
        missing = sorted(set(analytes or ()) - set(cohort.analytes))
        if missing:
            problems.append(f"{where}.analytes: {', '.join(missing)} not in the file (it has "
                            f"{', '.join(cohort.analytes)})")
        out.append(Dataset(name, resolved, tuple(analytes) if analytes else None, sha256,
                           tuple(cohort.covariate_names)))
    return out


def _check_dataset(path: Path, where: str, problems: list[str]):
    """(cohort, sha256 of the bytes read) or None with the data errors counted in `problems`
    (the first one located; `pkpd data check` prints them all)."""
    from ..data import check_file

    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    result = check_file(path)
    if result.cohort is None:
        first = result.report.errors[0]
        problems.append(f"{where}.path: {path} has {len(result.report.errors)} data error(s), the first at "
                        f"{first.location()}: {first.message} (run `pkpd data check {path}` for all of them)")
        return None
    return result.cohort, sha256


def _default_label(spec: str) -> str:
    """'multiphasic+cytokines' -> 'multiphasic_cytokines'; 'dir/mine.py' -> 'mine';
    'dir/mine.py:fast' -> 'fast'."""
    labels = []
    for part in spec.split("+"):
        path_text, sep, wanted = part.strip().partition(".py:")
        labels.append(wanted if sep else Path(part.strip()).stem if part.strip().endswith(".py") else part.strip())
    return "_".join(labels)


def _model_text(spec: str, base: Path) -> str:
    """Model files in `spec` ('a.py', 'x+b.py:name') resolved against the spec's folder, as
    dataset paths are (not against the current directory)."""
    parts = []
    for part in spec.split("+"):
        item = part.strip()
        path_text, sep, wanted = item.partition(".py:")
        if item.endswith(".py") or sep:
            file = (base / (path_text + ".py" if sep else item)).resolve()
            item = f"{file}:{wanted}" if sep else str(file)
        parts.append(item)
    return "+".join(parts)


def _models(entries, problems: list[str], base: Path, datasets: list[Dataset]) -> list[dict]:
    if not isinstance(entries, list) or not entries:
        problems.append("at least one [[models]] entry is needed (model = built-in name or model file)")
        return []
    out, seen = [], set()
    for i, entry in enumerate(entries, start=1):
        where = f"models[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            problems.append(f"{where}.model is missing (a built-in name such as multiphasic, or a model file)")
            continue
        spec = entry["model"]
        name = entry.get("name", _default_label(spec))
        spec = _model_text(spec, base)
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{where}.name must be letters, digits, _ . - (got {name!r})")
            continue
        if name in seen:
            problems.append(f"{where}.name {name!r} is used twice")
        seen.add(name)
        try:
            model = load(spec)
        except ModelError as exc:
            problems.append(f"{where}.model: {exc}")
            model = None
        iiv = entry.get("iiv")
        if iiv is not None and (not isinstance(iiv, list) or not all(isinstance(x, str) for x in iiv)):
            problems.append(f"{where}.iiv must be a list of parameter names")
            iiv = None
        elif iiv == []:
            problems.append(f"{where}.iiv is empty: list the parameters with variability, or leave iiv out "
                            "for the model's defaults")
            iiv = None
        fixed_effects = entry.get("fixed_effects", [])
        if not isinstance(fixed_effects, list) or not all(isinstance(x, str) for x in fixed_effects):
            problems.append(f"{where}.fixed_effects must be a list of parameter names")
            fixed_effects = []
        priors = []
        given = entry.get("priors", {})
        if not isinstance(given, dict):
            problems.append(f"{where}.priors must be a table such as {{ rho = [1.3, 0.3], omega_rho = "
                            f"\"HalfNormal(0.5)\" }}, not {given!r}")
            given = {}
        for pname, value in given.items():
            try:
                priors.append((pname, prior_value(pname, value)))
            except ValueError as exc:
                problems.append(f"{where}.priors.{pname}: {exc}")
        variants = entry.get("variants", {"base": []})
        if not isinstance(variants, dict) or not variants:
            problems.append(f"{where}.variants must be a table of name = [covariate effects]")
            variants = {"base": []}
        for vname, effects in variants.items():
            if not _NAME.match(vname):
                problems.append(f"{where}.variants.{vname}: a variant name must be letters, digits, _ . -")
            if not isinstance(effects, list) or not all(isinstance(e, str) for e in effects):
                problems.append(f"{where}.variants.{vname} must be a list such as [\"rho~lymphodepletion\"]")
                continue
            for effect in effects:
                _check_effect(f"{where}.variants.{vname}", effect, model, datasets, problems)
        if model is not None:
            declared = [p.name for p in model.parameters if p.iiv and not p.fixed]
            for pname, prior in priors:
                try:
                    check_priors(model, iiv or declared, {pname: prior})
                except ValueError as exc:
                    problems.append(f"{where}.priors: {exc}")
            for key, names in (("iiv", iiv or []), ("fixed_effects", fixed_effects)):
                for pname in names:
                    if pname not in model.parameter_names:
                        problems.append(f"{where}.{key}: model {spec} has no parameter {pname!r}")
                    elif model.parameter(pname).fixed:
                        problems.append(f"{where}.{key}: {pname!r} is a fixed constant of model {spec}")
            both = sorted(set(iiv or []) & set(fixed_effects))
            if both:
                problems.append(f"{where}: {', '.join(both)} listed in both iiv and fixed_effects; a parameter "
                                "has variability or not")
        extra = sorted(set(entry) - {"name", "model", "iiv", "fixed_effects", "priors", "variants"})
        if extra:
            problems.append(f"{where}: unknown key(s) {', '.join(extra)}")
        sha256 = hashlib.sha256("".join(src.sha256 for src in model.sources).encode()).hexdigest() \
            if model is not None else ""
        out.append({"name": name, "model": spec, "loaded": model, "iiv": tuple(iiv) if iiv else None,
                    "fixed_effects": tuple(fixed_effects),
                    "priors": tuple(priors), "variants": variants, "sha256": sha256})
    return out


def _check_effect(where: str, effect: str, model, datasets: list[Dataset], problems: list[str]) -> None:
    """A covariate effect's form, parameter (of `model`) and covariate (of every dataset)."""
    try:
        parsed = CovariateEffect.parse(effect)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return
    if model is not None and parsed.parameter not in model.parameter_names:
        problems.append(f"{where}: model {model.name} has no parameter {parsed.parameter!r}")
    for ds in datasets:
        if parsed.covariate not in ds.covariates + DERIVED_COVARIATES:
            problems.append(f"{where}: dataset {ds.name} has no covariate {parsed.covariate!r} (it has "
                            f"{', '.join(ds.covariates + DERIVED_COVARIATES)})")


def _search(entry, models: list[dict], datasets: list[Dataset], problems: list[str]) -> SearchSpec | None:
    """The [search] block, or None when the spec has none."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        problems.append("[search] must be a table (model, candidates, forward, backward)")
        return None
    extra = sorted(set(entry) - {"model", "dataset", "candidates", "forward", "backward"})
    if extra:
        problems.append(f"unknown key(s) search.{', search.'.join(extra)}")
    names = {m["name"]: m for m in models}
    model = entry.get("model", next(iter(names), None) if len(names) == 1 else None)
    if model not in names:
        problems.append(f"search.model must name one of the [[models]] ({', '.join(names) or 'none'}), not "
                        f"{model!r}: the search adds covariate relations to that model")
        return None
    dataset = entry.get("dataset", datasets[0].name if len(datasets) == 1 else None)
    chosen = [d for d in datasets if d.name == dataset]
    if not chosen:
        problems.append(f"search.dataset must name one of the [[datasets]] ({', '.join(d.name for d in datasets)}), "
                        f"not {dataset!r}")
        return None
    candidates = entry.get("candidates")
    if not isinstance(candidates, list) or not candidates or not all(isinstance(c, str) for c in candidates):
        problems.append("search.candidates must be a non-empty list of relations such as [\"cmax~lymphodepletion\", "
                        "\"fb~weight:power\"]")
        return None
    labels = []
    for i, candidate in enumerate(candidates, start=1):
        _check_effect(f"search.candidates[{i}]", candidate, names[model]["loaded"], chosen, problems)
        labels.append(candidate.replace(" ", ""))
    if len(set(labels)) != len(labels):
        problems.append("search.candidates lists a relation twice")
    thresholds = {}
    for key, default in (("forward", 2.0), ("backward", 2.0)):
        value = entry.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 100:
            problems.append(f"search.{key} must be a number of standard errors from 0 to 100 (e.g. {default}), "
                            f"not {value!r}")
            value = default
        thresholds[key] = float(value)
    return SearchSpec(model, dataset, tuple(labels), thresholds["forward"], thresholds["backward"])


def priors_of(fit: FitSpec) -> dict:
    return dict(fit.priors)
