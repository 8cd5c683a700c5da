"""cart-pkpd: CAR-T cell pharmacokinetic/pharmacodynamic modelling.

Data flows one way: files -> pkpd.data (a validated Cohort) -> pkpd.models -> pkpd.simulate,
pkpd.nca, pkpd.fit -> pkpd.compare -> pkpd.predict -> pkpd.dose -> pkpd.report.

`pkpd.fit(model, cohort)` and `pkpd.compare(spec)` are the functions of the subpackages of the
same names; import other names from the subpackages (`from pkpd.fit import fit_individual`).
"""

from ._cache import use_versioned_numba_cache

use_versioned_numba_cache()  # before any numba function of pkpd is defined

from . import analytes, units
from .data import Cohort, DataError, Report, check_file, read_cohort, write_adam, write_cohort, write_nonmem
from .nca import nca, summarize
from .resources import example_data
from .models import load as load_model
from .simulate import simulate, simulate_typical
from .fit import fit, fit_individual, FitResult
from .compare import compare

# Loaded on first use, not at import: matplotlib and scipy.stats cost a second of every
# command's start, and most commands need neither (nor the package's version).
_LAZY = {"posterior_predictive": ".predict", "select_dose": ".dose"}


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("cart-pkpd")
        except PackageNotFoundError:  # running from a source tree without installation
            return "0+unknown"
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'pkpd' has no attribute {name!r}")


__all__ = ["Cohort", "DataError", "FitResult", "Report", "analytes", "units", "check_file", "compare", "example_data",
           "fit", "fit_individual", "load_model", "nca", "posterior_predictive", "read_cohort", "select_dose",
           "simulate", "simulate_typical", "summarize", "write_adam", "write_cohort", "write_nonmem", "__version__"]
