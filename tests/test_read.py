"""Readers: both formats, mappings, units, censoring styles, covariates."""

import numpy as np
import pytest

from pkpd.data import check_file, read_cohort
from pkpd.units import conversion_factor


def test_example_cohort_reads_in_both_formats(example_nonmem, example_adam):
    nonmem, adam = read_cohort(example_nonmem), read_cohort(example_adam)
    assert nonmem.equals(adam), nonmem.differences(adam)
    assert len(nonmem.subjects) == 41
    assert set(nonmem.analytes) == {"transgene", "il2", "il6", "il10", "ifng", "bcells", "igg", "igm",
                                    "iga", "ige"}
    assert set(nonmem.subjects["product"]) == {"CD19", "CD19/BCMA", "CD19/CD20"}
    assert set(nonmem.subjects["lymphodepletion"]) == {True, False}
    # doses in cells/kg become absolute cells with the subject's weight
    per_kg = nonmem.doses[nonmem.doses["unit"] == "cells/kg"]
    weights = per_kg["subject"].map(nonmem.subjects["weight"])
    np.testing.assert_allclose(per_kg["absolute"], per_kg["amount"] * weights)
    assert set(nonmem.doses["absolute_unit"]) == {"cells"} and nonmem.time_unit == "d"
    assert (nonmem.observations["censored"] == 1).any()


def test_adam_actual_and_nominal_time(example_adam):
    obs = read_cohort(example_adam).observations
    assert (obs["time"] != obs["nominal_time"]).any()
    assert set(obs["nominal_time"]) >= {-1.0, 0.0, 3.0, 27.0, 365.0}


def test_user_mapping_for_other_column_names(write):
    text = ("PATID,DAYS,CONC,DOSE,EVENT,TEST\nA,0,.,3e8,1,.\nA,3,5000,0,0,transgene\n"
            "A,7,20000,0,0,transgene\n")
    path = write(text)
    assert not check_file(path, format="nonmem").report.ok
    cohort = read_cohort(path, format="nonmem", mapping={"subject": "PATID", "time": "DAYS",
                                                           "dv": "CONC", "amt": "DOSE",
                                                           "evid": "EVENT", "analyte": "TEST"})
    assert cohort.subject_ids == ["A"] and list(cohort.observations["value"]) == [5000, 20000]


def test_unknown_mapping_role_is_reported(write):
    result = check_file(write("ID,TIME,DV,AMT,DVID\n1,0,.,1,.\n"), mapping={"subjct": "ID"})
    assert result.report.errors[0].rule == "mapping" and "subjct" in result.report.errors[0].message


def test_evid_inferred_from_amt_and_hours(write):
    text = "ID,TIME,DV,AMT,DVID\n1,0,.,3e8,.\n1,72,5000,0,1\n1,168,20000,0,1\n"
    cohort = read_cohort(write(text), time_unit="h")
    assert list(cohort.observations["time"]) == [72.0, 168.0] and cohort.time_unit == "h"
    assert list(cohort.doses["evid"]) == [1]
    assert cohort.in_time_unit("d").observations["time"].tolist() == [3.0, 7.0]


def test_time_unit_not_given_is_a_warning(write):
    result = check_file(write("ID,TIME,DV,AMT,DVID\n1,0,.,3e8,.\n1,3,5000,0,1\n"))
    assumed = [f for f in result.report.warnings if f.rule == "time-unit-assumed"]
    assert result.cohort.time_unit == "d" and len(assumed) == 1 and "--time-unit" in assumed[0].fix


def test_time_unit_column(write):
    text = ("USUBJID,AFRLT,RRLTU,PARAMCD,AVAL,AVALU,EVID,AMT\nS1,0,HOURS,,,,1,3e8\n"
            "S1,48,HOURS,IL6,12,pg/mL,0,\nS1,3,DAYS,IL6,20,ng/L,0,\n")
    result = check_file(write(text))
    cohort = result.cohort
    assert cohort.time_unit == "h" and list(cohort.observations["time"]) == [48.0, 72.0]  # the most common unit
    assert list(cohort.observations["value"]) == [12.0, 20.0]  # ng/L == pg/mL
    assert any(f.rule == "time-unit" and "converted" in f.message for f in result.report.findings)


def test_adam_dosea_without_dose_rows(write):
    text = ("USUBJID,AFRLT,PARAMCD,AVAL,AVALU,ALLOQ,BLQFL,DOSEA,DOSEU,WTBL\n"
            "S1,3,CD19B,2,cells/uL,1,N,1e6,cells/kg,50\nS1,7,CD19B,,cells/uL,1,Y,1e6,cells/kg,50\n")
    cohort = read_cohort(write(text))
    assert cohort.doses[["time", "amount", "unit", "absolute"]].values.tolist() == [[0.0, 1e6, "cells/kg", 5e7]]
    obs = cohort.observations
    assert list(obs["censored"]) == [0, 1] and list(obs["value"]) == [2.0, 1.0]


def test_blq_flag_with_dv_given_is_censored_not_imputed(write):
    text = ("ID,TIME,DV,AMT,EVID,DVID,BLQ,LLOQ\n1,0,.,3e8,1,.,.,.\n1,3,25,0,0,1,1,50\n")
    result = check_file(write(text))
    obs = result.cohort.observations
    assert obs["censored"].tolist() == [1] and obs["value"].tolist() == [50.0]
    assert [f.rule for f in result.report.findings if not f.rule.endswith("-assumed")] == ["ignored-dv"]


def test_time_varying_covariates_on_evid2_rows(write):
    text = ("ID,TIME,DV,AMT,EVID,DVID,WT,CRP\n1,0,.,3e8,1,.,70,5\n1,3,5000,0,0,1,70,5\n"
            "1,30,.,0,2,.,64,12\n1,60,900,0,0,1,70,5\n")
    cohort = read_cohort(write(text))
    assert cohort.subjects.loc["1", "weight"] == 70 and cohort.subjects.loc["1", "CRP"] == 5
    assert cohort.events[["time", "evid", "weight", "CRP"]].values.tolist() == [[30.0, 2, 64.0, 12.0]]


@pytest.mark.parametrize("text, product", [("CD19-BCMA", "CD19/BCMA"), ("bcma/cd19", "CD19/BCMA"),
                                           ("CD20_CD19", "CD19/CD20"), ("cd19", "CD19")])
def test_product_spellings(write, text, product):
    csv = f"ID,TIME,DV,AMT,EVID,DVID,PRODUCT\n1,0,.,3e8,1,.,{text}\n1,3,5,0,0,1,{text}\n"
    assert read_cohort(write(csv)).subjects.loc["1", "product"] == product


def test_unknown_product_is_a_warning(write):
    csv = "ID,TIME,DV,AMT,EVID,DVID,PRODUCT\n1,0,.,3e8,1,.,CD7\n1,3,5,0,0,1,CD7\n"
    result = check_file(write(csv))
    assert result.cohort.subjects.loc["1", "product"] == "CD7"
    assert [f.rule for f in result.report.warnings if not f.rule.endswith("-assumed")] == ["unknown-product"]


def test_whitespace_delimited_nonmem_with_commented_header(write):
    text = "#ID TIME DV AMT EVID DVID\n1 0 . 3e8 1 .\n1 3 5000 0 0 1\n"
    assert read_cohort(write(text)).observations["value"].tolist() == [5000.0]


@pytest.mark.parametrize("source, target, factor", [
    ("mg/dL", "g/L", 0.01), ("kIU/L", "IU/mL", 1.0), ("ng/L", "pg/mL", 1.0),
    ("10^9/L", "cells/uL", 1000.0), ("copies/µg gDNA", "copies/ug", 1.0), ("/µL", "cells/uL", 1.0),
])
def test_unit_conversions(source, target, factor):
    assert conversion_factor(source, target) == pytest.approx(factor)


def test_copies_never_convert_to_cells():
    from pkpd.units import UnitError

    with pytest.raises(UnitError, match="cannot convert"):
        conversion_factor("copies/ug", "cells/uL")


def test_to_xarray_and_tidy_frame(example_nonmem):
    cohort = read_cohort(example_nonmem)
    ds = cohort.to_xarray()
    assert ds.sizes["subject"] == 41 and ds.sizes["obs"] == len(cohort.observations)
    assert set(ds["analyte"].values) == set(cohort.analytes)
    frame = cohort.to_frame()
    assert {"unit", "product", "dose_absolute", "censored"} <= set(frame.columns)
    assert len(frame) == len(cohort.observations)
