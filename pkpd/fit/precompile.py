"""Compile a sampler's model in a fresh process, so that the fit loads it from the cache.

    python -m pkpd.fit.precompile PAYLOAD

`compile_elsewhere(function, arguments)` writes `(function, arguments)` to a private temporary
file, runs this module on it in a new interpreter (which calls `function(*arguments)` for the
PyMC model and compiles it with `pkpd.fit.compile.compile_model`, filling the caches) and says
whether that succeeded. Why a fit does not simply compile in its own process is explained in
`pkpd.fit.compile`: code compiled in the sampling process draws differently from the same code
loaded from the cache, so the first fit of a model would not be reproducible by any later run.
The payload is written and read only by pkpd (pickle: module-level functions by name, data by value).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

#: the lines of a failed compile process's output kept in the warning
_TAIL = 20


def compile_elsewhere(function: Callable, arguments: tuple) -> bool:
    """Compile the PyMC model `function(*arguments)` in a new Python process; True when it
    finished. A failure is a warning (the caller then compiles in its own process)."""
    package_root = str(Path(__file__).resolve().parents[2])
    environment = {**os.environ,
                   "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory(prefix="pkpd-compile-") as folder:
        payload = Path(folder) / "model.pickle"
        try:
            payload.write_bytes(pickle.dumps((function, tuple(arguments))))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            warnings.warn(f"the model could not be handed to a separate compile process ({exc}); compiling here: "
                          "a rerun with the same seed may draw differently from this fit", stacklevel=3)
            return False
        done = subprocess.run([sys.executable, "-m", "pkpd.fit.precompile", str(payload)], env=environment,
                              capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-_TAIL:])
        warnings.warn(f"the separate compile process failed (exit status {done.returncode}); compiling here: a "
                      f"rerun with the same seed may draw differently from this fit. Its output ended:\n{tail}",
                      stacklevel=3)
        return False
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pkpd.fit.precompile PAYLOAD (written by pkpd.fit.precompile.compile_elsewhere)",
              file=sys.stderr)
        return 2
    from .compile import compile_model

    function, arguments = pickle.loads(Path(argv[0]).read_bytes())
    compile_model(function(*arguments))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
