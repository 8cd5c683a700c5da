"""Compile a sampler's model in a fresh process, so that the fit loads it from the cache.

    python -m pkpd.fit.precompile PAYLOAD

`compile_elsewhere(function, arguments)` writes `(function, arguments)` to a private temporary
file, runs this module on it in a new interpreter (which calls `function(*arguments)` for the
PyMC model and compiles it with `pkpd.fit.compile.compile_model`, filling the caches) and says
whether that succeeded. `start` starts such a process and returns at once, so that a fit can
compile its sampler's model while it computes its individual fits (`pkpd.fit.engine.fit`).
Why a fit does not simply compile in its own process is explained in `pkpd.fit.compile`: code
compiled in the sampling process draws differently from the same code loaded from the cache, so
the first fit of a model would not be reproducible by any later run.
The payload is written and read only by pkpd (pickle: module-level functions by name, data by value).
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

#: the lines of a failed compile process's output kept in the warning
_TAIL = 20
#: the file, beside the payload, in which the process says where its entry points came from
_ORIGIN = "origin.txt"
#: how often (seconds) the process checks that the fit that started it is still running
_PARENT_POLL_S = 0.5
#: the environment variable that names the process that started the compile process
_PARENT = "PKPD_COMPILE_PARENT"


class Compiling:
    """A compile process started by `start`: `wait()` says whether it finished, `cancel()` stops it."""

    def __init__(self, process: subprocess.Popen, folder: str):
        self._process, self._folder = process, folder

    def wait(self, warn: bool = True) -> bool:
        """Wait for the process; True when it finished. A failure is a warning (the caller then
        compiles in its own process) unless `warn` is false."""
        code = self._process.wait()
        output = Path(self._folder) / "output.txt"
        tail = "\n".join(output.read_text(errors="replace").strip().splitlines()[-_TAIL:]) if output.exists() else ""
        self._clean()
        if code != 0 and warn:
            warnings.warn(f"the separate compile process failed (exit status {code}); compiling here: a rerun with "
                          f"the same seed may draw differently from this fit. Its output ended:\n{tail}",
                          stacklevel=3)
        return code == 0

    def compiled(self) -> bool:
        """Whether the process has compiled the entry points (not found them in the cache)."""
        from .compile import FROM_CACHE

        try:
            return (Path(self._folder) / _ORIGIN).read_text() != FROM_CACHE
        except OSError:  # not done yet
            return False

    def cancel(self) -> None:
        """Stop the process (its work is not needed) and remove its files."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._clean()

    def _clean(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


def start(function: Callable, arguments: tuple) -> Compiling | None:
    """Start compiling the PyMC model `function(*arguments)` in a new Python process; None (with
    a warning) when the model cannot be handed to one."""
    package_root = str(Path(__file__).resolve().parents[2])
    environment = {**os.environ, _PARENT: str(os.getpid()),
                   "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    folder = tempfile.mkdtemp(prefix="pkpd-compile-")
    payload = Path(folder) / "model.pickle"
    try:
        payload.write_bytes(pickle.dumps((function, tuple(arguments))))
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        warnings.warn(f"the model could not be handed to a separate compile process ({exc}); compiling here: "
                      "a rerun with the same seed may draw differently from this fit", stacklevel=3)
        return None
    with open(Path(folder) / "output.txt", "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "pkpd.fit.precompile", str(payload)], env=environment,
                                   stdout=output, stderr=subprocess.STDOUT)
    return Compiling(process, folder)


def compile_elsewhere(function: Callable, arguments: tuple) -> bool:
    """Compile the PyMC model `function(*arguments)` in a new Python process; True when it
    finished. A failure is a warning (the caller then compiles in its own process)."""
    process = start(function, arguments)
    return process is not None and process.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pkpd.fit.precompile PAYLOAD (written by pkpd.fit.precompile.start)",
              file=sys.stderr)
        return 2
    from .compile import compile_model

    # the parent's pid as the starter saw it: it may already be gone when this line runs
    _stop_when_orphaned(int(os.environ.get(_PARENT) or os.getppid()), Path(argv[0]).parent)
    function, arguments = pickle.loads(Path(argv[0]).read_bytes())
    _, origin = compile_model(function(*arguments))
    # where the entry points came from, for `Compiling.compiled`: written when they are cached
    Path(argv[0]).with_name(_ORIGIN).write_text(origin)
    return 0


def _stop_when_orphaned(parent: int, folder: Path) -> None:
    """Exit, removing `folder`, once the process that started this one is gone: a fit killed
    while its compile process runs leaves no process or files behind (the caches stay sound,
    as numba and pytensor replace their files whole)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        shutil.rmtree(folder, ignore_errors=True)
        os._exit(1)  # at once: nothing in this process is wanted any more

    threading.Thread(target=watch, name="pkpd-compile-orphan-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
