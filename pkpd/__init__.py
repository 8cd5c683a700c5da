"""cart-pkpd: CAR-T cell pharmacokinetic/pharmacodynamic modelling.

Data flows one way: files -> pkpd.data (a validated Cohort) -> pkpd.nca (exposure metrics).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cart-pkpd")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

from . import analytes, units
from .data import Cohort, DataError, Report, check_file, read_cohort, write_adam, write_cohort, write_nonmem
from .nca import nca, summarize
from .resources import example_data

__all__ = ["Cohort", "DataError", "Report", "analytes", "units", "check_file", "read_cohort",
           "write_cohort", "write_nonmem", "write_adam", "nca", "summarize", "example_data",
           "__version__"]
