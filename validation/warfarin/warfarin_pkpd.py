"""Warfarin PK/PD: one compartment with first-order absorption after a lag, and a turnover model
of the prothrombin complex activity (PCA) whose production warfarin inhibits.

Written as a user writes a model file (README, "Your own model"). Time in hours, dose in mg.

    depot:   d(depot)/dt   = -ka*depot                    (the oral dose; lag tlag)
    central: d(central)/dt = ka*depot - cl/v*central      (C = central/v, mg/L)
    pca:     d(pca)/dt     = kout*r0*(1 - imax*C/(C + ic50)) - kout*pca,  pca(0) = r0   (% of normal)

imax = 1/(1 + exp(-imax_logit)) keeps the maximal inhibition below 1 (a positive imax_logit: imax
> 0.5). The structure is the Monolix demo project "warfarinPKPD" (oral1_1cpt_IndirectModel
InhibitionKin_TlagkaVClR0koutImaxIC50); the priors are weakly informative, centred on values
reviewed by Holford (Clin Pharmacokinet 1986;11:483): V ~10 L, CL ~0.2 L/h, IC50 ~1.5 mg/L, PCA
turnover half-life ~17 h; absorption ~1/h with a lag of ~1 h.
"""

import math

from pkpd.models import Dosing, LogNormal, Module, Observation, Parameter

HOLFORD = "Holford, Clin Pharmacokinet 1986;11:483 (review of warfarin PK/PD)"


def initial(p, c, m):
    return {"depot": 0, "central": 0, "pca": p.r0}


def rhs(t, s, p, c, x, m):
    conc = s.central / p.v
    imax = 1 / (1 + m.exp(-p.imax_logit))
    return {"depot": -p.ka * s.depot,
            "central": p.ka * s.depot - p.cl / p.v * s.central,
            "pca": p.kout * p.r0 * (1 - imax * conc / (conc + p.ic50)) - p.kout * s.pca}


warfarin_pkpd = Module(
    name="warfarin_pkpd",
    description="warfarin: 1-compartment oral PK with lag, turnover of PCA with inhibited production",
    parameters=(
        Parameter("tlag", 1.0, "h", "absorption lag", HOLFORD, prior=LogNormal(1.0, 1.0), iiv=0.5),
        Parameter("ka", 1.0, "1/h", "absorption rate constant", HOLFORD, prior=LogNormal(1.0, 1.0), iiv=0.8),
        Parameter("v", 10.0, "L", "volume of distribution", HOLFORD, prior=LogNormal(10.0, 1.0), iiv=0.3),
        Parameter("cl", 0.2, "L/h", "clearance", HOLFORD, prior=LogNormal(0.2, 1.0), iiv=0.3),
        Parameter("r0", 100.0, "1", "baseline PCA (% of normal)", HOLFORD, prior=LogNormal(100.0, 0.5), iiv=0.1),
        Parameter("kout", math.log(2) / 17, "1/h", "PCA turnover rate", HOLFORD, prior=LogNormal(math.log(2) / 17, 1.0),
                  iiv=0.2),
        Parameter("imax_logit", 4.0, "1", "logit of the maximal inhibition of PCA production", HOLFORD,
                  lower=0.01, upper=20, prior=LogNormal(4.0, 0.7)),
        Parameter("ic50", 1.5, "mg/L", "warfarin concentration giving half the maximal inhibition", HOLFORD,
                  prior=LogNormal(1.5, 1.0), iiv=0.5),
    ),
    initial=initial, rhs=rhs, time_unit="h", dose_unit="mg",
    dosing=(Dosing("depot", lag=lambda p, c, m: p.tlag),),
    observations=(
        Observation("warfarin", lambda t, s, p, c, x, m: s.central / p.v, "mg/L", error="combined1",
                    sigma=0.1, additive=0.3),
        Observation("pca", lambda t, s, p, c, x, m: s.pca, "%", error="additive", additive=4.0),
    ),
    references=(HOLFORD, "O'Reilly et al., J Clin Invest 1963;42:1542 (the data)"),
)
