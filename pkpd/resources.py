"""Where the built-in model definitions and example data live.

In an installed wheel they are inside the package (pkpd/_builtin/...); in a source
checkout they are the top-level models/ and data/ folders beside pkpd/.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def builtin_dir(kind: str) -> Path:
    """The folder of built-in `kind` ('data' or 'models')."""
    if kind not in ("data", "models", "analyses"):
        raise ValueError(f"unknown resource kind {kind!r}: use 'data', 'models' or 'analyses'")
    for candidate in (_PACKAGE / "_builtin" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the built-in {kind}/ folder is missing from this installation "
                            f"(looked in {_PACKAGE / '_builtin' / kind} and {_PACKAGE.parent / kind}); "
                            "reinstall cart-pkpd")


def demo_comparison_spec() -> Path:
    """The comparison the main job runs (analyses/compare_ck_models.toml)."""
    return builtin_dir("analyses") / "compare_ck_models.toml"


def example_data(format: str = "nonmem") -> Path:
    """Path of the example SLE cohort file in 'nonmem' or 'adam' style."""
    if format not in ("nonmem", "adam"):
        raise ValueError(f"unknown format {format!r}: use 'nonmem' or 'adam'")
    return builtin_dir("data") / f"example_{format}.csv"
