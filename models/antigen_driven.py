"""Antigen-driven CAR-T kinetics with B-cell depletion and recovery (autoimmune default).

In autoimmune disease the antigen is the patient's own CD19+ B-cell pool, removed within days,
so expansion is short and antigen-limited (Mackensen et al., Nat Med 2022; Mueller et al., NEJM 2024). States (blood-equivalent units):

    E  effector CAR-T cells (cells/uL)     dE/dt = (rho*F(t)*B/(B + kb) - alpha - kem)*E
    M  memory CAR-T cells (cells/uL)       dM/dt = kem*E - beta*M
    B  CD19+ B cells (cells/uL)            dB/dt = kout*b0*S - kout*B - kkill*E*B
    S  B-lineage output of the marrow      dS/dt = ks*(S + sin)*(1 - S) - kkills*E*S
       (fraction of baseline)

    F(t) = exp(-kexh*t): proliferative capacity, lost over weeks (exhaustion).
    An infusion of N CAR+ cells adds fblood*(1 + (eld - 1)*LD)*N/5e6 to E (the fraction of infused
    cells in 5 L of blood, boosted eld-fold by lymphodepletion): the dose's bioavailability into E,
    so split doses and re-infusions add to E when they are given. Before the first infusion
    E = M = 0, B = b0, S = 1 - sld*LD (Flu/Cy lymphodepletion also suppresses marrow output).
    Observed: transgene = scale*(E + M) copies/ug; CAR-T cells = E + M; blood B cells = B.

Why this structure: with expansion driven by B/(B + kb) and memory
cells that keep killing, B cells settle at an interior equilibrium B* = kb*(alpha+kem)/(rho-alpha-
kem), 30-40% of baseline, with a damped second wave of effectors. SLE patients recover B cells
fully (naive phenotype) around day 110 (Mackensen et al., Nat Med 2022: 110 +/- 32 d), so here
(1) memory cells do not kill, (2) effectors lose proliferative capacity over time, so returning
B cells do not trigger re-expansion, and (3) recovery is paced by the B-lineage precursors in the
marrow, which CAR-T effectors also kill (CD19 is expressed from the pro-B stage) and which regrow
by self-renewal from CD19-negative progenitors (logistic growth with a small influx `sin`).
The aplasia therefore lasts longer with more expansion (a larger AUC of effectors).

Sources of the default values:
- alpha 0.16/d, beta 0.0032/d, kem = FB*(alpha-beta) with FB 0.0079: Stein et al., CPT:PSP
  2019;8:285, Table 1 (effector decline, persistence).
- rho 1.3/d: doubling time of the net expansion 0.75-0.8 d (Stein et al. 2019: 0.78 d;
  Ogasawara et al., Clin Pharmacokinet 2021: 0.755 d; rho 0.9-1.5/d).
- b0 150 cells/uL: normal peripheral CD19+ B cells 100-500 cells/uL (reference range, recalled).
- kout 0.05/d: B-cell regrowth rate 0.05/d (Hosseini et al. 2020, T-cell-engager model).
- scale 60 copies/ug per CAR-T cell/uL: 1 ug gDNA ~ 1.5e5 nucleated cells, ~5,000 leukocytes/uL,
  ~2 vector copies per CAR-T cell (about 6.6 pg DNA per diploid cell).
- kkill, kkills, ks, kexh, kb, fblood, sld: calibrated (not published) so that the typical CD19
  patient at 1e6 cells/kg after Flu/Cy reproduces the published behaviour: B cells below 5/uL
  within 7 days, back above 5/uL between day 80 and 140, >= 50% of baseline by day 365, and a
  transgene peak near day 10 (analyses/calibrate_antigen_driven.py prints these figures).
"""

from pkpd.models import Dosing, LogNormal, Module, Observation, Parameter

STEIN = "Stein et al., CPT:PSP 2019;8:285, Table 1"
CAL = "calibrated to Mackensen et al., Nat Med 2022 (B-cell return 110 +/- 32 d); see module docstring"
BLOOD_UL = 5e6  # 5 L of blood in uL


def _initial(p, c, m):
    return {"E": 0, "M": 0, "B": p.b0, "S": 1 - p.sld * c.ld}


def _engraftment(p, c, m):
    """Blood effector level (cells/uL) per infused CAR+ cell."""
    return p.fblood * (1 + (p.eld - 1) * c.ld) / BLOOD_UL


def _rhs(t, s, p, c, x, m):
    capacity = m.exp(-p.kexh * t)
    expansion = p.rho * capacity * s.B / (s.B + p.kb)
    return {
        "E": (expansion - p.alpha - p.kem) * s.E,
        "M": p.kem * s.E - p.beta * s.M,
        "B": p.kout * p.b0 * s.S - p.kout * s.B - p.kkill * s.E * s.B,
        "S": p.ks * (s.S + p.sin) * (1 - s.S) - p.kkills * s.E * s.S,
    }


antigen_driven = Module(
    name="antigen_driven",
    description="effector/memory CAR-T expanding on CD19+ B cells; B-cell killing, marrow recovery",
    parameters=(
        Parameter("rho", 1.3, "1/d", "maximal antigen-driven expansion rate",
                  "Stein 2019 (doubling 0.78 d), Ogasawara 2021 (0.755 d)", lower=0.05, upper=10,
                  prior=LogNormal(1.3, 0.3), iiv=0.15),
        Parameter("kb", 4.7, "cells/uL", "B-cell level giving half-maximal expansion", CAL,
                  lower=0.01, upper=1e4, prior=LogNormal(4.7, 1.0)),
        Parameter("alpha", 0.16, "1/d", "effector contraction rate", STEIN, lower=1e-3, upper=3,
                  prior=LogNormal(0.16, 0.4), iiv=0.3),
        Parameter("kem", 0.00124, "1/d", "effector to memory conversion (FB*(alpha-beta))", STEIN,
                  lower=1e-6, upper=0.5, prior=LogNormal(0.00124, 1.0)),
        Parameter("beta", 0.0032, "1/d", "memory decline rate", STEIN, lower=1e-5, upper=0.5,
                  prior=LogNormal(0.0032, 0.5)),
        Parameter("kexh", 0.02, "1/d", "loss of proliferative capacity", CAL, lower=1e-4, upper=1,
                  prior=LogNormal(0.02, 0.5)),
        Parameter("fblood", 0.027, "1", "fraction of infused cells in blood at infusion", CAL,
                  lower=1e-6, upper=1, prior=LogNormal(0.027, 1.0), iiv=0.6),
        Parameter("scale", 60.0, "copies/ug per cells/uL", "transgene copies per CAR-T cell level",
                  "1.5e5 nucleated cells per ug gDNA (6.6 pg DNA per cell)", fixed=True),
        Parameter("b0", 150.0, "cells/uL", "baseline blood CD19+ B cells", "reference range 100-500 cells/uL",
                  lower=1, upper=5000, prior=LogNormal(150.0, 0.7), iiv=0.5),
        Parameter("kout", 0.05, "1/d", "B-cell turnover rate", "Hosseini et al. 2020 (regrowth 0.05/d)",
                  lower=1e-3, upper=2, prior=LogNormal(0.05, 0.5)),
        Parameter("kkill", 0.0118, "uL/cell/d", "B-cell killing per effector CAR-T cell", CAL,
                  lower=1e-4, upper=100, prior=LogNormal(0.0118, 1.0)),
        Parameter("kkills", 0.0032, "uL/cell/d", "killing of marrow B-lineage precursors", CAL,
                  lower=1e-6, upper=1, prior=LogNormal(0.0032, 0.7), iiv=0.3),
        Parameter("ks", 0.057, "1/d", "self-renewal rate of marrow B-lineage output", CAL,
                  lower=1e-3, upper=2, prior=LogNormal(0.057, 0.5), iiv=0.2),
        Parameter("sin", 1e-4, "1", "influx from CD19-negative progenitors (relative)", CAL,
                  fixed=True),
        Parameter("eld", 3.0, "1", "engraftment boost by lymphodepletion (fold)",
                  "Kimmel et al., Proc R Soc B 2021 (homeostatic expansion after lymphodepletion)",
                  lower=1.0001, upper=100, prior=LogNormal(3.0, 0.7)),
        Parameter("sld", 0.9, "1", "suppression of marrow output by lymphodepletion", CAL,
                  lower=1e-3, upper=0.999, fixed=True),
    ),
    initial=_initial,
    rhs=_rhs,
    dosing=(Dosing("E", "cells", bioavailability=_engraftment),),
    signals={
        "car": lambda t, s, p, c, x, m: s.E + s.M,
        "effector": lambda t, s, p, c, x, m: s.E,
        "bcells": lambda t, s, p, c, x, m: s.B,
        "bcell_fraction": lambda t, s, p, c, x, m: s.B / p.b0,
        "engaged": lambda t, s, p, c, x, m: s.E * s.B / (s.B + p.kb),
    },
    observations=(
        Observation("transgene", lambda t, s, p, c, x, m: p.scale * (s.E + s.M), "copies/ug",
                    error="log", sigma=0.5, source=STEIN + " (0.56 on the ln scale)"),
        Observation("cart_cells", lambda t, s, p, c, x, m: s.E + s.M, "cells/uL", error="log",
                    sigma=0.35),
        Observation("bcells", lambda t, s, p, c, x, m: s.B, "cells/uL", error="log", sigma=0.3),
    ),
    references=(STEIN, "Mackensen et al., Nat Med 2022", "Hosseini et al. 2020"),
)

MODULES = (antigen_driven,)
