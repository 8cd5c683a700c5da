"""Posterior predictions: individual fits, goodness of fit, VPC and pcVPC."""

from .posterior import PosteriorDraws
from .ppc import PosteriorPredictive, posterior_predictive
from .vpc import vpc_statistics

__all__ = ["PosteriorDraws", "PosteriorPredictive", "posterior_predictive", "vpc_statistics"]
