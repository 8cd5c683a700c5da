"""An IV one-compartment model whose clearance is halved while a co-medication is on (TOCI = 1,
a time-varying covariate from EVID=2 rows), in days."""

from pkpd.models import Dosing, LogNormal, Module, Observation, Parameter


def rhs(t, s, p, c, x, m):
    return {"a": -p.k * (1 - 0.5 * c.toci) * s.a}


toci = Module(
    name="toci", description="elimination halved while TOCI = 1",
    parameters=(Parameter("k", 0.3, "1/d", "elimination rate", prior=LogNormal(0.3, 1.0), iiv=0.2),),
    initial=lambda p, c, m: {"a": 0}, rhs=rhs, time_unit="d", dose_unit="mg", covariates=("toci",),
    dosing=(Dosing("a"),),
    observations=(Observation("level", lambda t, s, p, c, x, m: s.a, "mg", error="log", sigma=0.1),),
)
