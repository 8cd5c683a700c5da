"""Find modules by name: the built-ins in models/, or a user's own model file.

A model file is a Python file that defines Module objects (a `MODULES` tuple, or module-level
Module variables). `load("antigen_driven+cytokines")` composes built-ins; an item that is a
path (`my_model.py`, or `my_model.py:name` when the file defines several) loads a user's module.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from pathlib import Path

from ..resources import builtin_dir
from .model import Model
from .spec import Module, ModelError


def _modules_in_file(path: Path) -> dict[str, Module]:
    name = f"pkpd_model_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot load model file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    except Exception as exc:
        raise ModelError(f"model file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    found = list(getattr(module, "MODULES", ())) or [v for v in vars(module).values() if isinstance(v, Module)]
    return {m.name: m for m in found}


@lru_cache(maxsize=1)
def builtin_modules() -> dict[str, Module]:
    """name -> Module for every built-in definition in models/."""
    out: dict[str, Module] = {}
    for path in sorted(builtin_dir("models").glob("*.py")):
        if path.name.startswith("_"):
            continue
        for name, module in _modules_in_file(path).items():
            if name in out:
                raise ModelError(f"built-in module {name!r} is defined twice (in {path.name})")
            out[name] = module
    return out


def _resolve(item: str) -> Module:
    item = item.strip()
    path_text, _, wanted = item.partition(".py:")
    if item.endswith(".py") or wanted:
        path = Path(path_text if wanted else item[:-3]).with_suffix(".py")
        if not path.exists():
            raise ModelError(f"model file {path} does not exist")
        modules = _modules_in_file(path)
        if wanted:
            if wanted not in modules:
                raise ModelError(f"{path} defines no module {wanted!r}; it defines {', '.join(modules)}")
            return modules[wanted]
        if len(modules) != 1:
            raise ModelError(f"{path} defines {len(modules)} modules ({', '.join(modules) or 'none'}); "
                             f"name one as {path}:NAME")
        return next(iter(modules.values()))
    modules = builtin_modules()
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
    return Model.compose([_resolve(p) for p in parts])


def list_models() -> list[Module]:
    return list(builtin_modules().values())
