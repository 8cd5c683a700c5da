"""Dose selection: probability of target attainment for new virtual patients from the posterior."""

from .output import write_dose
from .selection import DoseSelection, Scenario, default_doses, recommend, scenarios_for, select_dose
from .targets import DEFAULT_TARGETS, Target

__all__ = ["DEFAULT_TARGETS", "DoseSelection", "Scenario", "Target", "default_doses", "recommend",
           "scenarios_for", "select_dose", "write_dose"]
