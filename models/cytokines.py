"""Cytokines released by antigen-engaged CAR-T effectors: IL-6, IFN-gamma, IL-10, IL-2.

Drive = antigen-engaged effectors A = E*B/(B + kb) (signal `engaged` of the cellular-kinetic
module). Each cytokine has a baseline and first-order elimination:

    dC/dt = kel*(base + emax*A/(A + ec50) - C),   C(0) = base

so the baseline is a steady state, the peak comes while effectors meet B cells (within the
first two weeks), and levels return to baseline within a month once B cells are gone.
Elimination half-lives: IL-6 ~20 min, IFN-gamma ~1 h, IL-10 ~2 h, IL-2 ~10 min
are recalled values [R], fixed because 3-day sampling cannot inform them. Baselines and
maximal increases are typical of grade-1 CRS in SLE (mostly fever; Mackensen et al., Nat Med
2022; Mueller et al., NEJM 2024) [R].
Observed on the log scale with censoring below the LLOQ.
"""

import math

from pkpd.models import LogNormal, Module, Observation, Parameter

SCIENCE = "grade-1 CRS in SLE (Mackensen 2022, Mueller 2024)"
CYTOKINES = {  # name: (baseline pg/mL, max increase pg/mL, half-life in hours, source of half-life)
    "il6": (3.0, 60.0, 20 / 60, "IL-6 t1/2 ~20 min (recalled [R])"),
    "ifng": (5.0, 40.0, 1.0, "recalled [R]"),
    "il10": (2.0, 20.0, 2.0, "recalled [R]"),
    "il2": (1.0, 6.0, 10 / 60, "recalled [R]"),
}


def _parameters():
    out = [Parameter("ec50_cyt", 20.0, "cells/uL", "engaged effectors giving half the maximal release",
                     "calibrated: cytokine peaks within 14 days (Mackensen 2022)", lower=0.01, upper=1e4,
                     prior=LogNormal(20.0, 1.0))]
    for name, (base, emax, half_life_h, source) in CYTOKINES.items():
        out += [
            Parameter(f"base_{name}", base, "pg/mL", f"baseline {name}", SCIENCE + " [R]",
                      lower=0.01, upper=1e3, prior=LogNormal(base, 0.7), iiv=0.4),
            Parameter(f"emax_{name}", emax, "pg/mL", f"maximal increase of {name}", SCIENCE + " [R]",
                      lower=0.01, upper=1e5, prior=LogNormal(emax, 1.0), iiv=0.6),
            Parameter(f"kel_{name}", math.log(2) / (half_life_h / 24), "1/d",
                      f"elimination rate of {name} (t1/2 {half_life_h * 60:.0f} min)", source, fixed=True),
        ]
    return tuple(out)


def _initial(p, c, m):
    return {name: p[f"base_{name}"] for name in CYTOKINES}


def _rhs(t, s, p, c, x, m):
    drive = x.engaged / (x.engaged + p.ec50_cyt)
    return {name: p[f"kel_{name}"] * (p[f"base_{name}"] + p[f"emax_{name}"] * drive - s[name])
            for name in CYTOKINES}


def _observation(name, quasi_steady_state=False):
    def observe(t, s, p, c, x, m):
        if quasi_steady_state:
            return p[f"base_{name}"] + p[f"emax_{name}"] * x.engaged / (x.engaged + p.ec50_cyt)
        return s[name]

    return Observation(name, observe, "pg/mL", error="log", sigma=0.4,
                       source="assay and biological variability of cytokines [R]")


cytokines = Module(
    name="cytokines",
    kind="pd",
    description="IL-6, IFN-gamma, IL-10, IL-2 driven by antigen-engaged CAR-T effectors",
    parameters=_parameters(),
    initial=_initial,
    rhs=_rhs,
    requires=("engaged",),
    observations=tuple(_observation(name) for name in CYTOKINES),
    references=(SCIENCE,),
)


# --- quasi-steady state ---------------------------------------------------------------------
# Half-lives of minutes to hours against sampling every 3 days: each cytokine is at its steady
# state for the current drive, C = base + emax*A/(A + ec50). The same parameters without the
# (fixed, uninformed) elimination rates and without four stiff ODE states, which would force
# an explicit solver to steps of minutes. This is the form to fit; `cytokines` keeps the
# turnover ODE for simulation.
def _qss_parameters():
    return tuple(p for p in _parameters() if not p.name.startswith("kel_"))


cytokines_qss = Module(
    name="cytokines_qss",
    kind="pd",
    description="IL-6, IFN-gamma, IL-10, IL-2 at quasi-steady state with the engaged effectors (no states)",
    parameters=_qss_parameters(),
    closed_form=lambda t, p, c, x, m: {},
    requires=("engaged",),
    observations=tuple(_observation(name, quasi_steady_state=True) for name in CYTOKINES),
    references=(SCIENCE,),
    approximates="cytokines",
)

MODULES = (cytokines, cytokines_qss)
