"""Simulation: model predictions for cohorts and virtual trials (vectorised across subjects)."""

from .design import Design
from .events import Schedule, schedule
from .predict import predict
from .solve import Solution, SolverError, covariate_matrix, parameter_matrix, predict_reference, solve
from .virtual import (draw_parameters, fine_schedule, parse_dose, simulate, simulate_typical,
                      template_cohort, trial_schedule)

__all__ = ["Design", "Schedule", "Solution", "SolverError", "covariate_matrix", "draw_parameters", "predict_reference",
           "schedule",
           "fine_schedule", "parameter_matrix", "parse_dose", "predict", "simulate", "simulate_typical",
           "solve", "template_cohort", "trial_schedule"]
