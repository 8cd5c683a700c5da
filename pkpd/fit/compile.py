"""The sampler's model compiled for nutpie, with every compiled piece cached on disk.

nutpie's `compile_pymc_model` compiles the log density with numba (pytensor caches that part on
disk: pkpd's Ops carry cache keys) and then wraps it in C entry points with `numba.cfunc`, which it
cannot cache (they read the shared data through a pointer baked in as a global): in every fit
numba links and optimises the whole log density again, solver included (7-8 s for a small user
model). This module builds the same `CompiledPyMCModel` with entry points generated as source
text that reads nutpie's user-data record at fixed offsets, compiled with `cache=True` under a
key made of the log density's own cache key and the entry's source, so an unchanged model
fitted again to data of the same shape loads everything and starts sampling within seconds.
Where a piece of the log density cannot be cached (an Op without a key), nutpie compiles as usual.

A fit samples with code loaded from the cache, never with code compiled in its own process. The
two are not the same to the last bit: in a process that has just compiled the log density, its
gradient with respect to the variability SDs differed from a process that loaded the same cached
code, by about 1e-15 relative at 14 of 300 points of a small multiphasic fit (with pytensor's
fastmath on or off), and NUTS trajectories grow such differences, so the first fit of a model
(empty caches) drew differently from every later run with the same seed. When the cache lacks
the entry points, a fresh process (`pkpd.fit.precompile`) builds the same PyMC model from
`build` and compiles it, and this one loads the result. `pkpd.fit.fit` starts that process at
its beginning (`started`), so that it compiles beside the individual fits (on 2 cores the first
fit of a small model took 87 s of wall time against 110 s when it compiled after them). Not
covered: a process that compiled pytensor's pieces itself before (a model built in Python, a
PyMC model compiled directly) still draws as such a process does.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numba
import numpy as np
from numba.core import sigutils
from numba.core.ccallback import CFunc

if TYPE_CHECKING:
    from .precompile import Compiling

#: the C signatures nutpie calls: logp(dim, x, gradient out, logp out, user data) and
#: expand(dim, expanded, x, values out, user data)
_LOGP_SIGNATURE = numba.types.int64(numba.types.uint64, numba.types.CPointer(numba.types.double),
                                    numba.types.CPointer(numba.types.double),
                                    numba.types.CPointer(numba.types.double), numba.types.voidptr)
_EXPAND_SIGNATURE = numba.types.int64(numba.types.uint64, numba.types.uint64,
                                      numba.types.CPointer(numba.types.double),
                                      numba.types.CPointer(numba.types.double), numba.types.voidptr)


#: where a sampler's entry points came from (`compile_model`'s second value)
FROM_CACHE = "loaded from the cache"
FROM_CHILD = "compiled in a separate process, then loaded from the cache"
HERE = "compiled in this process"


def compile_model(pm_model, build: tuple[Callable, tuple] | None = None, started: Compiling | None = None):
    """(nutpie's compiled model, where its entry points came from): nutpie.compile_pymc_model(pm_model)
    (numba backend, support-point initialisation) with its C entry points cached on disk when the
    log density is cacheable.

    build: (function, arguments), a module-level function and picklable arguments that make the
    same PyMC model in another process. When the entry points are not in the cache, that process
    compiles them and this one loads them (see the module's docstring: code compiled here would
    sample differently from every later run); without `build` (or when that process fails) they
    are compiled here, and the fit says so.

    started: a compile process started earlier (`pkpd.fit.precompile.start`) on a PyMC model
    that should compile to the same code: waited for when the cache lacks the entry points (and
    `build` compiled after all if it did not fill them), stopped when they are there."""
    keep_generated_source_together()
    import nutpie
    from nutpie import compile_pymc as nc
    from pymc.initial_point import make_initial_point_fn
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS

    initial_point_fn = nc._wrap_with_lock(make_initial_point_fn(
        model=pm_model, overrides=None, default_strategy="support_point", jitter_rvs=set(pm_model.free_RVs),
        return_transformed=True))
    n_dim, n_expanded, logp_pt, expand_pt, initial, shape_info, reparameterized = nc._make_functions(
        pm_model, mode="NUMBA", compute_grad=True, join_expanded=True, pymc_initial_point_fn=initial_point_fn,
        var_names=None)
    logp_fn, expand_fn = logp_pt.vm.jit_fn, expand_pt.vm.jit_fn
    keys = [CACHED_SRC_FUNCTIONS.get(getattr(f, "py_func", None)) for f in (logp_fn, expand_fn)]
    if None in keys:  # a piece without a cache key: nutpie's own (uncached) entry points
        return nutpie.compile_pymc_model(pm_model, default_initialization_strategy="support_point"), HERE

    shared = list(dict.fromkeys([*logp_pt.get_shared(), *expand_pt.get_shared()]))
    # nutpie names the shared variables by random keys; here by position, so that the record's
    # layout (and the entry points' source) is the same in every process
    shared_var_keys = {var: f"shared_{i}" for i, var in enumerate(shared)}
    shared_data = {shared_var_keys[var]: np.array(var.get_value(), order="C", copy=True) for var in shared}
    for value in shared_data.values():
        value.flags.writeable = False
    user_data = nc.make_user_data(shared_var_keys, shared_data)
    logp_c = _entry("logp", logp_fn, keys[0], n_dim, None, [shared_var_keys[v] for v in logp_pt.get_shared()],
                    shared_data, user_data.dtype)
    expand_c = _entry("expand", expand_fn, keys[1], n_dim, n_expanded,
                      [shared_var_keys[v] for v in expand_pt.get_shared()], shared_data, user_data.dtype)
    entries = (logp_c, expand_c)
    cached = all(_in_cache(e) for e in entries)
    elsewhere = cached and started is not None and started.compiled()
    if not cached:
        if started is not None:
            elsewhere = started.wait(warn=build is None) and all(_in_cache(e) for e in entries)
        if not elsewhere and build is not None:
            from .precompile import compile_elsewhere

            elsewhere = compile_elsewhere(*build)
    if started is not None:
        started.cancel()  # finished, or not needed
    for entry in entries:
        entry.compile()  # from the cache where it is there
    origin = (FROM_CHILD if elsewhere else FROM_CACHE) if all(e._cache_hits for e in entries) else HERE
    dims, coords = nc._prepare_dims_and_coords(pm_model, shape_info, reparameterized)
    return nc.CompiledPyMCModel(
        _n_dim=n_dim, dims=dims, _coords=coords,
        _shapes={name: tuple(shape) for name, _, shape in zip(*shape_info)},
        compiled_logp_func=logp_c, compiled_expand_func=expand_c, initial_point_func=initial,
        shared_data=shared_data, shared_var_keys=shared_var_keys, user_data=user_data, n_expanded=n_expanded,
        shape_info=shape_info, logp_func=logp_pt, expand_func=expand_pt, reparameterized_names=reparameterized), origin


def keep_generated_source_together() -> None:
    """Have pytensor keep the Python source it generates for numba in one folder beside its
    compiled code (`generated_src_dir`), unless the user chose one. Left unset, pytensor writes one
    new file per generated function to the system's temporary folder and never removes it: a few
    dozen per fit, thousands a day for a comparison. In the folder they are named by content,
    reused, and pruned when unused for a month."""
    from pytensor import config

    try:
        if not config.generated_src_dir:
            config.generated_src_dir = str(Path(config.base_compiledir) / "generated_src")
    except AttributeError:  # a pytensor without the option
        pass


def _in_cache(entry: CFunc) -> bool:
    """Whether numba's cache holds `entry` for this machine (its index names a data file that exists)."""
    cache = entry._cache
    try:
        key = cache._index_key(entry._sig, entry._targetdescr.target_context.codegen())
        name = cache._cache_file._load_index().get(key)
        return name is not None and os.path.isfile(cache._cache_file._data_path(name))
    except (AttributeError, OSError, TypeError, ValueError):  # another numba's internals: treated as absent
        return False


def _offsets(record: np.dtype, key: str) -> tuple[int, int, list[int]]:
    """Positions (in 8-byte words) of a shared variable's data pointer, size and shape in nutpie's
    user-data record."""
    shared, base = record.fields["shared"]
    word = lambda part: (base + shared.fields[part][1] + shared.fields[part][0].fields[key][1]) // 8
    ndim = shared.fields["shape"][0].fields[key][0].shape
    return word("data"), word("size"), [word("shape") + i for i in range(ndim[0] if ndim else 0)]


def _entry(kind: str, function, function_key: str, n_dim: int, n_expanded: int | None, keys: list[str],
           shared_data: dict, record: np.dtype):
    """The numba.cfunc entry point `kind` ("logp" or "expand") around `function`, cached on
    disk, not yet compiled (`compile()` loads it from the cache or compiles it)."""
    from pytensor.link.numba.cache import compile_numba_function_src

    arrays = []
    for i, key in enumerate(keys):
        data, _, shape = _offsets(record, key)
        dims = "".join(f"int(raw[{w}]), " for w in shape)
        arrays.append(f"    s{i} = numba.carray(address_as_void_pointer(raw[{data}]), ({dims}), "
                      f"np.{shared_data[key].dtype.name})")
    names = "".join(f", s{i}" for i in range(len(keys)))
    words = record.itemsize // 8
    if kind == "logp":
        source = "\n".join([
            "def logp_entry(dim, x_, out_, logp_, user_data_):",
            f"    if dim != {n_dim}:", "        return -1",
            f"    raw = numba.carray(user_data_, ({words},), np.uint64)",
            *arrays,
            "    try:",
            f"        x = numba.carray(x_, ({n_dim},))", f"        out = numba.carray(out_, ({n_dim},))",
            "        logp = numba.carray(logp_, ())",
            f"        value, grad = function(x{names})",
            "        logp[()] = value", "        out[...] = grad",
            "        if not np.all(np.isfinite(out)):", "            return 3",
            "        if not np.isfinite(value):", "            return 4",
            "    except Exception:", "        return 1",
            "    return 0", ""])
        signature = _LOGP_SIGNATURE
    else:
        source = "\n".join([
            "def expand_entry(dim, expanded, x_, out_, user_data_):",
            f"    if dim != {n_dim} or expanded != {n_expanded}:", "        return -1",
            f"    raw = numba.carray(user_data_, ({words},), np.uint64)",
            *arrays,
            "    try:",
            f"        x = numba.carray(x_, ({n_dim},))", f"        out = numba.carray(out_, ({n_expanded},))",
            f"        (values,) = function(x{names})", "        out[...] = values",
            "    except Exception:", "        return -2",
            "    return 0", ""])
        signature = _EXPAND_SIGNATURE
    from nutpie.compile_pymc import address_as_void_pointer

    key = hashlib.sha256(f"pkpd.fit.compile:{function_key}:{source}".encode()).hexdigest()
    # this module's globals as the function's (as pytensor does): a cached function's environment
    # is rebuilt from its module by name
    python = compile_numba_function_src(
        source, f"{kind}_entry", globals() | {"function": function, "address_as_void_pointer": address_as_void_pointer},
        cache_key=key)
    entry = CFunc(python, sigutils.normalize_signature(signature), locals={}, options={})
    entry.enable_caching()
    return entry
