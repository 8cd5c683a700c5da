"""Simulation: model predictions for cohorts and virtual trials (vectorised across subjects)."""

from .predict import cohort_covariates, predict
from .solve import Solution, SolverError, covariate_matrix, parameter_matrix, solve, solve_states
from .virtual import (draw_parameters, fine_schedule, parse_dose, simulate, simulate_typical,
                      template_cohort, trial_schedule)

__all__ = ["Solution", "SolverError", "cohort_covariates", "covariate_matrix", "draw_parameters",
           "fine_schedule", "parameter_matrix", "parse_dose", "predict", "simulate", "simulate_typical",
           "solve", "solve_states", "template_cohort", "trial_schedule"]
