"""Dose-escalation designs and their operating characteristics.

A design is a small frozen value that, given the patients treated and the DLTs seen at each dose
level, says where the next cohort goes (or that the trial stops) and which dose the trial
selects at its end. `operating_characteristics` runs a design many times on fixed true DLT
probabilities; the model-based trial simulator draws them from a fitted PK/PD model instead.

    boin.py              BOIN (Liu and Yuan 2015): boundaries, decision table, design
    mtpi2.py             mTPI-2 (Guo, Li, Yuan and Ji 2017)
    crm.py               CRM (O'Quigley, Pepe and Fisher 1990), optional overdose control, TITE-CRM
    runs.py              how one trial runs: cohort by cohort, or patient by patient (TITE)
    three_plus_three.py  the 3+3 with de-escalation
    selection.py         isotonic selection of the MTD, the Beta posterior tail for elimination
    oc.py                operating characteristics by simulation, with Monte Carlo SEs
    toxicity.py          CRS grade and DLT as functions of a model-predicted exposure
    toxicity_fit.py      the toxicity model fitted to graded adverse-event records
    simulation.py        the model-based trial simulator (virtual patients from a fitted model)
"""

from functools import partial

from .boin import BOIN, boin_boundaries
from .crm import CRM, skeleton
from .mtpi2 import MTPI2
from .oc import OperatingCharacteristics, operating_characteristics, run_trial
from .simulation import TrialSimulation, simulate_trials
from .three_plus_three import ThreePlusThree
from .toxicity import ToxicityModel
from .toxicity_fit import fit_toxicity

DESIGNS = {"3+3": ThreePlusThree, "boin": BOIN, "mtpi2": MTPI2, "crm": CRM, "tite-crm": partial(CRM, tite=True)}

__all__ = ["BOIN", "CRM", "DESIGNS", "MTPI2", "OperatingCharacteristics", "ThreePlusThree", "ToxicityModel",
           "TrialSimulation", "boin_boundaries", "fit_toxicity", "operating_characteristics", "run_trial", "simulate_trials", "skeleton"]
