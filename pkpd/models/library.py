"""Find modules by name: the built-ins in models/, or a user's own model file.

A model file is a Python file that defines Module objects (a `MODULES` tuple, or module-level
Module variables). `load("antigen_driven+cytokines")` composes built-ins; an item that is a
path (`my_model.py`, or `my_model.py:name` when the file defines several) loads a user's module.
Loading a model file runs it, as NONMEM runs its control streams' code and Stan its programs:
load only files you trust. Each module keeps the text of its file (`Model.sources`), so that a
fit result can rebuild its model from what was fitted, not from whatever the file says later.
"""

from __future__ import annotations

import hashlib
import sys
import types
from functools import lru_cache
from pathlib import Path

from ..resources import builtin_dir
from .model import Model, ModelSource
from .spec import Module, ModelError


def _modules_in_text(text: str, label: str, module_name: str) -> dict[str, Module]:
    """Run a model file's text as a Python module and return its Module objects by name."""
    module = types.ModuleType(module_name)
    module.__file__ = label
    sys.modules[module_name] = module
    try:
        exec(compile(text, label, "exec"), module.__dict__)
    except ModelError as exc:
        raise ModelError(f"{label}: {exc}") from exc
    except Exception as exc:
        raise ModelError(f"model file {label} failed to import: {type(exc).__name__}: {exc}") from exc
    found = list(getattr(module, "MODULES", ())) or [v for v in vars(module).values() if isinstance(v, Module)]
    return {m.name: m for m in found}


def _modules_in_file(path: Path, label: str | None = None) -> dict[str, tuple[Module, ModelSource]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from exc
    label = label or str(path)
    digest = hashlib.sha256(text.encode()).hexdigest()
    modules = _modules_in_text(text, label, f"pkpd_model_{path.stem}_{digest[:12]}")
    return {name: (m, ModelSource.of(name, label, text)) for name, m in modules.items()}


def modules_from_source(source: ModelSource) -> Module:
    """The module `source.module` rebuilt from its recorded file text, checked against the
    recorded hash (a fit result reopens its model this way, whatever happened to the file)."""
    digest = hashlib.sha256(source.text.encode()).hexdigest()
    if digest != source.sha256:
        raise ModelError(f"the recorded source of module {source.module} ({source.file}) does not match its hash "
                         f"(sha256 {digest[:12]} != {source.sha256[:12]}): the run folder was altered; re-run the fit")
    modules = _modules_in_text(source.text, f"{source.file} (as fitted)", f"pkpd_fitted_{digest[:12]}")
    if source.module not in modules:
        raise ModelError(f"the recorded source {source.file} defines no module {source.module!r}")
    return modules[source.module]


@lru_cache(maxsize=1)
def _builtins() -> dict[str, tuple[Module, ModelSource]]:
    out: dict[str, tuple[Module, ModelSource]] = {}
    for path in sorted(builtin_dir("models").glob("*.py")):
        if path.name.startswith("_"):
            continue
        for name, entry in _modules_in_file(path, f"builtin:{path.name}").items():
            if name in out:
                raise ModelError(f"built-in module {name!r} is defined twice (in {path.name})")
            out[name] = entry
    return out


def builtin_modules() -> dict[str, Module]:
    """name -> Module for every built-in definition in models/."""
    return {name: module for name, (module, _) in _builtins().items()}


def _resolve(item: str) -> tuple[Module, ModelSource]:
    item = item.strip()
    path_text, _, wanted = item.partition(".py:")
    if item.endswith(".py") or wanted:
        path = Path(f"{path_text}.py" if wanted else item)  # not with_suffix: "model_v1.2.py" is that file
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        modules = _modules_in_file(path, path.name)
        if wanted:
            if wanted not in modules:
                raise ModelError(f"{path} defines no module {wanted!r}; it defines {', '.join(modules)}")
            return modules[wanted]
        if len(modules) != 1:
            raise ModelError(f"{path} defines {len(modules)} modules ({', '.join(modules) or 'none'}); "
                             f"name one as {path}:NAME")
        return next(iter(modules.values()))
    modules = _builtins()
    if item not in modules:
        raise ModelError(f"unknown model {item!r}; built-in: {', '.join(modules)}; or give the path "
                         "of your own model file (my_model.py)")
    return modules[item]


def load(spec: "str | Model | Module") -> Model:
    """A Model from 'name', 'name+name', 'path.py', 'path.py:name' (or a Module/Model)."""
    if isinstance(spec, Model):
        return spec
    if isinstance(spec, Module):
        return Model.compose([spec])
    parts = [p for p in str(spec).split("+")]
    if any(not p.strip() for p in parts):
        raise ModelError(f"empty module name in {spec!r}")
    resolved = [_resolve(p) for p in parts]
    return Model.compose([m for m, _ in resolved], sources=[src for _, src in resolved])


def full_form(model: Model) -> Model | None:
    """`model` with each quasi-steady-state module replaced by the module it approximates
    (`Module.approximates`, defined in the same file), or None when no module approximates one."""
    if not any(m.approximates for m in model.modules):
        return None
    sources = {src.module: src for src in model.sources}
    modules, new_sources = [], []
    for m in model.modules:
        src = sources.get(m.name)
        if m.approximates:
            if src is None:
                raise ModelError(f"module {m.name} approximates {m.approximates!r}, but its source file is not "
                                 "recorded: load the model with pkpd.models.load")
            defined = _modules_in_text(src.text, src.file, f"pkpd_full_{hashlib.sha256(src.text.encode()).hexdigest()[:12]}")
            if m.approximates not in defined:
                raise ModelError(f"module {m.name} approximates {m.approximates!r}, which {src.file} does not define "
                                 f"(it defines {', '.join(defined)})")
            m, src = defined[m.approximates], ModelSource.of(m.approximates, src.file, src.text)
        modules.append(m)
        if src is not None:
            new_sources.append(src)
    full = Model.compose(modules, model.use_closed_forms, sources=new_sources)
    kept = {k: v for k, v in model.overrides.items() if k in full.parameter_names}
    return full.with_typical(**kept) if kept else full


def list_models() -> list[Module]:
    return list(builtin_modules().values())
