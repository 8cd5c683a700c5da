"""CAR-T models: declared once (spec), composed by name (model), executed in numpy (codegen).

    model = pkpd.models.load("antigen_driven+cytokines+immunoglobulins")
"""

from .spec import COVARIATES, ERROR_MODELS, Dosing, HalfNormal, LogNormal, Module, ModelError, Observation, Parameter
from .model import Model, ModelSource
from .library import builtin_modules, full_form, list_models, load, modules_from_source
from .codegen import numpy_functions

__all__ = ["COVARIATES", "ERROR_MODELS", "Dosing", "HalfNormal", "LogNormal", "Module", "ModelError", "Observation", "Parameter",
           "Model", "ModelSource", "builtin_modules", "full_form", "list_models", "load", "modules_from_source", "numpy_functions"]
