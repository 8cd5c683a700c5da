"""Dose selection: probability of target attainment for new virtual patients from the posterior."""

from .output import dose_figures, read_dose, write_dose
from .selection import DoseSelection, Scenario, data_schedule, default_doses, recommend, scenarios_for, select_dose
from .targets import DEFAULT_TARGETS, Target

__all__ = ["DEFAULT_TARGETS", "DoseSelection", "Scenario", "Target", "data_schedule", "default_doses",
           "dose_figures", "read_dose", "recommend", "scenarios_for", "select_dose", "write_dose"]
