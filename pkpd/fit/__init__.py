"""Fitting: individual fits (lmfit) now; the Bayesian population engine builds on them."""

from .individual import default_estimated, fit_individual, individual_parameters

__all__ = ["default_estimated", "fit_individual", "individual_parameters"]
