"""Phenobarbital in neonates: one compartment, repeated IV doses, weight and Apgar covariates.

Grasela & Donn, Dev Pharmacol Ther 1985;8:374 (59 neonates). The structure of the NONMEM
example 'pheno' (ADVAN1 TRANS2) as a user's model file: time in hours, doses in mg.

    CL = cl * WT,  V = v * WT * (apgar_v if APGR < 5),   d(a)/dt = -CL/V * a,   C = a / V

apgar_v is the factor on V when the Apgar score is below 5 (NONMEM's 1 + THETA(3), which its
bound (-0.99) keeps positive: a log-normal parameter here). Priors are weakly informative,
centred on round values of the published scale (CL ~0.005 L/h/kg, V ~1 L/kg; Grasela & Donn
1985 abstract: 0.0047 L/h/kg and 0.96 L/kg, V 13% higher with Apgar < 5) and on no effect.
"""

from pkpd.models import Dosing, LogNormal, Module, Observation, Parameter

GRASELA = "Grasela & Donn, Dev Pharmacol Ther 1985;8:374"


def _volume(p, c, m):
    return p.v * c.weight * m.where(c.apgr < 5, p.apgar_v, 1)


def rhs(t, s, p, c, x, m):
    return {"a": -p.cl * c.weight / _volume(p, c, m) * s.a}


phenobarbital = Module(
    name="phenobarbital",
    description="phenobarbital in neonates: 1-compartment IV, clearance and volume per kg, Apgar < 5 on V",
    parameters=(
        Parameter("cl", 0.005, "L/h/kg", "clearance per kg", GRASELA, prior=LogNormal(0.005, 1.0), iiv=0.2),
        Parameter("v", 1.0, "L/kg", "volume per kg", GRASELA, prior=LogNormal(1.0, 1.0), iiv=0.2),
        Parameter("apgar_v", 1.0, "1", "factor on V when the Apgar score is below 5", GRASELA,
                  lower=0.1, upper=10, prior=LogNormal(1.0, 0.5)),
    ),
    initial=lambda p, c, m: {"a": 0}, rhs=rhs, time_unit="h", dose_unit="mg", covariates=("apgr",),
    dosing=(Dosing("a"),),
    observations=(Observation("phenobarbital", lambda t, s, p, c, x, m: s.a / _volume(p, c, m), "mg/L",
                              error="proportional", sigma=0.12),),
    references=(GRASELA,),
)
