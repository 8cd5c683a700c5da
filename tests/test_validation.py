"""One malformed file per validation rule: the finding names the line, column and problem."""

import pytest

from pkpd.data import DataError, check_file, read_cohort

from .conftest import VALID_NONMEM, replace_line


def only(report, rule):
    found = [f for f in report.findings if f.rule == rule]
    assert found, f"no {rule!r} finding in:\n{report.format()}"
    return found


def test_valid_file_has_no_findings(write):
    result = check_file(write(VALID_NONMEM), time_unit="d", dose_unit="cells")
    assert result.report.findings == []
    assert result.cohort is not None
    assert result.cohort.subject_ids == ["1", "2"]


@pytest.mark.parametrize("content, rule, wording", [
    ("", "empty-file", "the file is empty"),
    ("   \n\n", "empty-file", "the file is empty"),
    ("ID,TIME,DV,AMT,DVID\n", "header-only", "no data rows"),
    (b"\x00\x01\x02\xff\xfe\x00garbage\x00" * 20, "encoding", "cannot be decoded"),
    ("IDTIMEDV\n1\n", "delimiter", "could not find a column delimiter"),
])
def test_file_level_problems(write, content, rule, wording):
    result = check_file(write(content))
    assert result.cohort is None
    finding = only(result.report, rule)[0]
    assert wording in finding.message
    assert finding.fix
    assert finding.file.endswith("data.csv")


def test_missing_file_is_reported_not_raised(tmp_path):
    result = check_file(tmp_path / "nope.csv")
    assert only(result.report, "file")[0].message.startswith("file ")


def test_ragged_row(write):
    text = replace_line(VALID_NONMEM, 4, "1,3,5000", "1,3,5000,99")
    finding = only(check_file(write(text)).report, "ragged-row")[0]
    assert finding.line == 4 and "13 fields but the header has 12" in finding.message


def test_missing_required_column(write):
    text = VALID_NONMEM.replace("ID,TIME,", "ID,TEMPS,")
    finding = only(check_file(write(text)).report, "missing-column")[0]
    assert finding.line == 1 and finding.column == "TIME" and "required column TIME" in finding.message
    assert "--map time=" in finding.fix


def test_missing_analyte_identifier(write):
    text = VALID_NONMEM.replace("DVID", "XYZ")
    finding = only(check_file(write(text)).report, "missing-column")[0]
    assert "ANALYTE" in finding.column and "DVID" in finding.column and "CMT" in finding.column


def test_non_numeric_value(write):
    text = replace_line(VALID_NONMEM, 5, "1,7,20000", "1,7,2e4 copies")
    finding = only(check_file(write(text)).report, "non-numeric")[0]
    assert (finding.line, finding.column, finding.subject) == (5, "DV", "1")
    assert "'2e4 copies' is not a number" in finding.message


def test_non_numeric_time(write):
    text = replace_line(VALID_NONMEM, 4, "1,3,", "1,day3,")
    finding = only(check_file(write(text)).report, "non-numeric")[0]
    assert (finding.line, finding.column) == (4, "TIME")


def test_missing_observation_value(write):
    text = replace_line(VALID_NONMEM, 10, "2,7,800", "2,7,.")
    finding = only(check_file(write(text)).report, "missing-value")[0]
    assert (finding.line, finding.column, finding.subject) == (10, "DV", "2")
    assert "MDV=1" in finding.fix


def test_missing_value_allowed_with_mdv(write):
    text = replace_line(VALID_NONMEM, 10, "2,7,800,0,0,0", "2,7,.,0,0,1")
    result = check_file(write(text))
    assert result.report.ok
    obs = result.cohort.observations
    assert obs["mdv"].sum() == 1
    assert len(result.cohort.analyte_observations("transgene")) == 3


def test_unknown_evid(write):
    text = replace_line(VALID_NONMEM, 4, "5000,0,0,0", "5000,0,7,0")
    finding = only(check_file(write(text)).report, "unknown-evid")[0]
    assert (finding.line, finding.column) == (4, "EVID") and "EVID 7" in finding.message


@pytest.mark.parametrize("amount, wording", [("0", "0, not positive"), ("-1e8", "-1e+08, not positive"),
                                             (".", "missing")])
def test_dose_amount(write, amount, wording):
    text = replace_line(VALID_NONMEM, 3, "3e8", amount)
    finding = only(check_file(write(text)).report, "dose-amount")[0]
    assert (finding.line, finding.column, finding.subject) == (3, "AMT", "1")
    assert wording in finding.message


def test_observations_without_dose(write):
    text = VALID_NONMEM.replace("2,0,.,1e6,1,1,.,0,.,60,CD19/BCMA,0\n", "")
    finding = only(check_file(write(text)).report, "no-dose")[0]
    assert finding.subject == "2" and finding.line == 7  # the subject's first observation
    assert "observations but no dose" in finding.message


def test_censored_without_lloq_flag_style(write):
    text = (VALID_NONMEM.replace(",CENS,LLOQ,", ",BLQ,LLOQ,")
            .replace("2,3,50,0,0,0,1,1,50", "2,3,.,0,0,0,1,Y,."))
    finding = only(check_file(write(text)).report, "censored-no-lloq")[0]
    assert (finding.line, finding.column, finding.subject) == (9, "LLOQ", "2")


def test_censored_without_lloq_cens_style(write):
    text = VALID_NONMEM.replace("2,3,50,0,0,0,1,1,50", "2,3,.,0,0,0,1,1,.")
    finding = only(check_file(write(text)).report, "censored-no-lloq")[0]
    assert finding.line == 9


def test_below_lloq_unflagged_is_a_warning(write):
    text = replace_line(VALID_NONMEM, 4, "1,3,5000", "1,3,20")
    result = check_file(write(text))
    finding = only(result.report, "below-lloq-unflagged")[0]
    assert finding.severity == "warning" and (finding.line, finding.column) == (4, "DV")
    assert result.cohort is not None  # warnings do not stop the cohort


def test_unknown_unit_on_observation(write):
    text = VALID_NONMEM.replace("WT,PRODUCT,LD", "WT,PRODUCT,LD,UNIT")
    lines = text.splitlines()
    lines = [lines[0]] + [ln + (",wombats/uL" if i == 4 else ",") for i, ln in enumerate(lines[1:], start=2)]
    finding = only(check_file(write("\n".join(lines) + "\n")).report, "unknown-unit")[0]
    assert (finding.line, finding.column) == (4, "UNIT")


def test_inconsistent_unit_within_analyte(write):
    text = VALID_NONMEM.replace("WT,PRODUCT,LD", "WT,PRODUCT,LD,UNIT")
    lines = text.splitlines()
    lines = [lines[0]] + [ln + (",g/L" if i == 5 else ",") for i, ln in enumerate(lines[1:], start=2)]
    finding = only(check_file(write("\n".join(lines) + "\n")).report, "inconsistent-unit")[0]
    assert (finding.line, finding.column) == (5, "UNIT")
    assert "cannot be converted to its canonical unit copies/ug" in finding.message


def test_convertible_units_are_converted(write):
    text = ("ID,TIME,DV,AMT,EVID,ANALYTE,UNIT\n1,0,.,3e8,1,.,.\n1,-1,1200,0,0,IgG,mg/dL\n"
            "1,30,9.5,0,0,IgG,g/L\n")
    result = check_file(write(text))
    assert result.report.ok
    assert list(result.cohort.observations["value"]) == [12.0, 9.5]
    assert only(result.report, "unit-converted")[0].severity == "note"


def test_conflicting_duplicates(write):
    text = VALID_NONMEM + "1,7,25000,0,0,0,1,0,50,70,CD19,1\n"
    finding = only(check_file(write(text)).report, "duplicate-conflict")[0]
    assert finding.line == 11 and finding.subject == "1"
    assert "lines 5, 11" in finding.message


def test_identical_duplicates_are_a_warning(write):
    text = VALID_NONMEM + "1,7,20000,0,0,0,1,0,50,70,CD19,1\n"
    result = check_file(write(text))
    assert only(result.report, "duplicate")[0].severity == "warning"
    assert len(result.cohort.analyte_observations("transgene")) == 4


def test_unknown_analyte(write):
    text = VALID_NONMEM.replace("1,7,20000,0,0,0,1,", "1,7,20000,0,0,0,99,")
    finding = only(check_file(write(text)).report, "unknown-analyte")[0]
    assert (finding.line, finding.column) == (5, "DVID") and "analyte_codes" in finding.fix


def test_custom_analyte_with_declared_unit(write):
    text = ("ID,TIME,DV,AMT,EVID,ANALYTE\n1,0,.,3e8,1,.\n1,3,12,0,0,CRP\n")
    assert only(check_file(write(text)).report, "unknown-analyte")
    result = check_file(write(text), units={"CRP": "mg/L"})
    assert result.report.ok and result.cohort.unit("CRP") == "mg/L"


def test_cells_per_kg_without_weight(write):
    text = "ID,TIME,DV,AMT,AMTU,EVID,DVID\n1,0,.,1e6,cells/kg,1,.\n1,3,500,0,.,0,1\n"
    finding = only(check_file(write(text)).report, "dose-weight")[0]
    assert finding.line == 2 and "cells/kg" in finding.message


def test_covariate_conflict(write):
    text = replace_line(VALID_NONMEM, 5, "CD19,1", "CD19/CD20,1")
    finding = only(check_file(write(text)).report, "covariate-conflict")[0]
    assert finding.column == "PRODUCT" and finding.subject == "1"


def test_negative_concentration(write):
    text = replace_line(VALID_NONMEM, 4, "1,3,5000", "1,3,-5")
    finding = only(check_file(write(text)).report, "negative-value")[0]
    assert finding.line == 4 and "log-transformed" in finding.fix


def test_bad_cens_and_blq_values(write):
    text = replace_line(VALID_NONMEM, 4, "5000,0,0,0,1,0,50", "5000,0,0,0,1,2,50")
    finding = only(check_file(write(text)).report, "cens-value")[0]
    assert (finding.line, finding.column) == (4, "CENS")


def test_negative_times_are_valid_baselines(write):
    result = check_file(write(VALID_NONMEM))
    assert (result.cohort.observations["time"] < 0).sum() == 2


def test_every_problem_reported_at_once(write):
    text = replace_line(VALID_NONMEM, 3, "3e8", "0")
    text = replace_line(text, 4, "5000,0,0", "abc,0,9")
    text = replace_line(text, 10, "2,7,800", "2,7,.")
    report = check_file(write(text)).report
    rules = {f.rule for f in report.errors}
    assert {"dose-amount", "non-numeric", "unknown-evid", "missing-value"} <= rules
    with pytest.raises(DataError) as info:
        read_cohort(write(text))
    assert info.value.report.errors == report.errors
    assert "data.csv:3" in str(info.value)


def test_latin1_file_is_read_with_a_note(write):
    text = "ID,TIME,DV,AMT,EVID,ANALYTE,UNIT\n1,0,.,3e8,1,.,.\n1,3,500,0,0,transgene,copies/µg\n"
    result = check_file(write(text.encode("latin-1")))
    assert result.report.ok and only(result.report, "encoding")[0].severity == "note"
    assert result.cohort.observations["value"].iloc[0] == 500


@pytest.mark.parametrize("row, rule, wording", [
    ("1,0,100,1,-1,.,.,.,.", "dose-rate", "modelled rate"),
    ("1,0,100,1,5,2,.,.,.", "dose-rate", "both RATE and DUR"),
    ("1,0,100,1,.,-2,.,.,.", "dose-duration", "negative"),
    ("1,0,100,1,.,.,.,2,.", "dose-ii", "needs the dosing interval"),
    ("1,0,100,1,.,.,12,1.5,.", "dose-addl", "whole number"),
    ("1,0,100,1,.,.,12,.,2", "dose-ss", "SS 2 is not supported"),
])
def test_dosing_columns_are_checked(write, row, rule, wording):
    text = ("ID,TIME,AMT,EVID,RATE,DUR,II,ADDL,SS,DV,ANALYTE,UNIT,TIMEU,AMTU\n" + row + ",.,.,.,HOURS,mg\n"
            "1,1,0,0,.,.,.,.,.,5,conc,mg/L,HOURS,.\n")
    finding = only(check_file(write(text)).report, rule)[0]
    assert wording in finding.message and finding.line == 2


def test_dose_units_of_every_kind(write):
    text = ("ID,TIME,AMT,AMTU,EVID,DV,ANALYTE,UNIT,WT,TIMEU\n1,0,1.5,mg/kg,1,.,.,.,80,HOURS\n"
            "1,1,0,.,0,5,conc,mg/L,80,HOURS\n2,0,250,ug,1,.,.,.,60,HOURS\n2,1,0,.,0,5,conc,mg/L,60,HOURS\n")
    cohort = check_file(write(text)).cohort
    assert cohort.doses[["unit", "absolute", "absolute_unit"]].values.tolist() == [["mg/kg", 120.0, "mg"],
                                                                                 ["ug", 250.0, "ug"]]
    bad = check_file(write(text.replace("ug,", "furlongs,")))
    assert only(bad.report, "dose-unit")[0].line == 4
