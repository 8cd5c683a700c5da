"""One-compartment model with first-order absorption, in hours and mg: a user's model file.

    depot:   d(depot)/dt = -ka * depot             doses by mouth (default target), F = f, lag = tlag
    central: d(central)/dt = ka * depot - cl/v * central      IV doses and infusions (CMT 2)
    conc = central / v (mg/L); combined residual error
The closed-form solution (superposition of doses) is what the tests check the solvers against.
"""

from pkpd.models import Dosing, LogNormal, Module, Observation, Parameter


def initial(p, c, m):
    return {"depot": 0, "central": 0}


def rhs(t, s, p, c, x, m):
    return {"depot": -p.ka * s.depot, "central": p.ka * s.depot - p.cl / p.v * s.central}


oral_1cpt = Module(
    name="oral_1cpt", description="one compartment, first-order absorption with lag and bioavailability",
    parameters=(Parameter("ka", 1.5, "1/h", "absorption rate", prior=LogNormal(1.5, 1.0), iiv=0.5),
                Parameter("cl", 0.13, "L/h", "clearance", prior=LogNormal(0.13, 1.0), iiv=0.3),
                Parameter("v", 8.0, "L", "volume", prior=LogNormal(8.0, 1.0), iiv=0.2),
                Parameter("tlag", 0.9, "h", "absorption lag", prior=LogNormal(0.9, 0.5), iiv=0.3),
                Parameter("f", 0.8, "1", "bioavailability", upper=1.0, prior=LogNormal(0.8, 0.2))),
    initial=initial, rhs=rhs, time_unit="h", dose_unit="mg",
    dosing=(Dosing("depot", bioavailability=lambda p, c, m: p.f, lag=lambda p, c, m: p.tlag), Dosing("central")),
    observations=(Observation("conc", lambda t, s, p, c, x, m: s.central / p.v, "mg/L", error="combined",
                              sigma=0.05, additive=0.3, lloq=0.05),),
)
