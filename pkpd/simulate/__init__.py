"""Simulation: model predictions for cohorts and virtual trials (vectorised across subjects)."""

from .design import Design
from .events import Schedule, schedule
from .predict import predict
from .regimen import Regimen, parse_regimen
from .solve import Solution, SolverError, covariate_matrix, parameter_matrix, predict_reference, solve
from .virtual import (curve_grid, default_schedule, draw_parameters, fine_schedule, simulate, simulate_typical,
                      template_cohort, trial_schedule)

__all__ = ["Design", "Regimen", "Schedule", "Solution", "SolverError", "covariate_matrix", "curve_grid",
           "default_schedule", "draw_parameters", "fine_schedule", "parameter_matrix", "parse_regimen", "predict",
           "predict_reference", "schedule", "simulate", "simulate_typical", "solve", "template_cohort",
           "trial_schedule"]
