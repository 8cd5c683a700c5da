"""Where pkpd's compiled code is cached, and what invalidates it.

numba keys a cached function by its own source file only: a cached caller keeps the machine code
of a callee from another file after that file changed (numba issue #6845), so an edited
likelihood kept running inside a cached log density. Every numba cache of pkpd therefore lives
in one folder per version of pkpd's whole source (`source_digest`), and the keys of the sampler's
compiled pieces (pytensor's cache) include that digest as well.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def cache_root() -> Path:
    """~/.cache/pkpd, or $PKPD_CACHE."""
    return Path(os.environ.get("PKPD_CACHE", Path.home() / ".cache" / "pkpd"))


@lru_cache(maxsize=1)
def source_digest() -> str:
    """Digest of every Python source file of the pkpd package (what compiled code depends on)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def use_versioned_numba_cache() -> None:
    """Point numba's cache at a folder of this source version (under $NUMBA_CACHE_DIR when the
    user set one). Must run before pkpd's numba functions are defined: numba reads the folder
    when a function is decorated."""
    import numba

    base = os.environ.get("NUMBA_CACHE_DIR")
    root = Path(base) / "pkpd" if base else cache_root() / "numba"
    numba.config.CACHE_DIR = str(root / source_digest())
