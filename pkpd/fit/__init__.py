"""Fitting: individual fits (lmfit) and the Bayesian hierarchical population engine."""

from .engine import fit
from .individual import default_estimated, fit_individual, individual_parameters
from .population import CovariateEffect, PopulationSpec
from .result import Diagnostic, FitResult

__all__ = ["CovariateEffect", "Diagnostic", "FitResult", "PopulationSpec", "default_estimated", "fit",
           "fit_individual", "individual_parameters"]
