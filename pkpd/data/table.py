"""Read a delimited text file into a table of strings, remembering each row's line number.

Problems with the file itself (missing, empty, header only, undecodable, no delimiter, ragged
rows, invisible characters) become located findings rather than tracebacks. Line numbers are the
file's own: a quoted cell spanning lines counts every line, and only CR and LF end a line (a
U+2028 inside a cell is reported as an invisible character, not taken as a line break).
Nothing is skipped without a note: blank rows, trailing unnamed empty columns (Excel exports)
and, only when asked (`comment="#"`, NONMEM's IGNORE=#), comment rows.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .report import Report

#: cells that mean "no value" (NONMEM's ".", R's NA); "nan" and "inf" are not among them: they
#: are reported as not finite numbers where a number is expected
MISSING = {"", ".", "NA", "N/A", "NULL", "null"}
_DELIMITERS = [",", ";", "\t", "|"]
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# spaces trimmed from the ends of a cell: ASCII blanks, tab and the Unicode space separators
# (a non-breaking space from Excel); line and paragraph separators are not among them
_EDGE_SPACE = " \t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_INVISIBLE = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}
#: a character no cell may hold unseen: anything but printable ASCII and line breaks
_NOT_PLAIN = re.compile(r"[^\x20-\x7e\r\n]")


@dataclass(frozen=True)
class RawTable:
    """The file's cells as stripped strings ("" for missing), plus `_line` (file line number)."""

    frame: pd.DataFrame
    encoding: str
    delimiter: str


def _decode(raw: bytes, report: Report) -> tuple[str, str] | None:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            pass
    if b"\x00" not in raw:
        try:
            return raw.decode("utf-8-sig"), "utf-8"
        except UnicodeDecodeError:
            pass
        # Lab exports from Windows: cp1252/latin-1 ("µg" as a single byte).
        from charset_normalizer import from_bytes

        best = from_bytes(raw).best()
        if best is not None and best.encoding and _printable_share(str(best)) > 0.98:
            report.add("note", "encoding", f"the file is not UTF-8; read it as {best.encoding}.",
                       "save the file as UTF-8 to silence this note.")
            return str(best), best.encoding
    where = raw.find(b"\x00")
    report.add("error", "encoding", "the file cannot be decoded as text (binary content or an unknown "
               "encoding" + (f"; a NUL byte on line {raw[:where].count(b'\n') + 1}" if where >= 0 else "") + ").",
               "export the data as a UTF-8 CSV file (comma-separated, one header row).",
               line=raw[:where].count(b"\n") + 1 if where >= 0 else None)
    return None


def _printable_share(text: str) -> float:
    if not text:
        return 1.0
    ok = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return ok / len(text)


def _sniff_delimiter(header: str) -> str | None:
    counts = {d: header.count(d) for d in _DELIMITERS}
    best = max(counts, key=counts.get)
    if counts[best] > 0:
        return best
    if re.search(r"\S[ \t]+\S", header):  # NONMEM-style whitespace-separated
        return " "
    return None


def invisible_character(text: str, allow_line_breaks: bool = False) -> str | None:
    """'U+2028 (LINE SEPARATOR)' for the first invisible or control character in `text`, else None."""
    if text.isascii() and text.isprintable():
        return None
    for ch in text:
        if ch in "\r\n" and allow_line_breaks:
            continue
        if unicodedata.category(ch) in _INVISIBLE:
            return f"U+{ord(ch):04X} ({unicodedata.name(ch, 'control character')})"
    return None


@dataclass
class _Record:
    line: int  # the line the record starts on
    last: int  # the line it ends on (a quoted cell may span lines)
    cells: list[str]


def _records(lines: list[str], start: int, delimiter: str, report: Report) -> list[_Record] | None:
    """Records of lines[start:], each with the file line numbers it spans (1-based)."""
    if delimiter == " ":
        return [_Record(i + 1, i + 1, re.split(r"[ \t]+", lines[i].strip(" \t")) if lines[i].strip(" \t") else [])
                for i in range(start, len(lines))]
    reader = csv.reader(io.StringIO("\n".join(lines[start:]), newline=""), delimiter=delimiter)
    out, consumed = [], 0
    try:
        for cells in reader:
            out.append(_Record(start + consumed + 1, start + reader.line_num, cells))
            consumed = reader.line_num
    except csv.Error as exc:
        report.add("error", "csv", f"the file cannot be parsed as CSV here: {exc}.",
                   "check the quoting of this row (a quote must close the cell it opens).",
                   line=start + reader.line_num)
        return None
    return out


def read_raw_table(path: str | Path, report: Report, comment: str | None = None) -> RawTable | None:
    """Read `path`; on a file-level problem add an error to `report` and return None.

    comment: a marker such as "#": rows whose first cell starts with it are skipped (with a note),
    as NONMEM's IGNORE=# does. Without it such rows are read as data, with a warning.
    """
    path = Path(path)
    if not path.exists():
        report.add("error", "file", f"file {str(path)!r} does not exist.", "check the path.")
        return None
    if path.is_dir():
        report.add("error", "file", f"{str(path)!r} is a directory, not a data file.",
                   "give the path of the CSV file.")
        return None
    raw = path.read_bytes()
    if not raw.strip():
        report.add("error", "empty-file", "the file is empty.",
                   "export the dataset again with a header row and one row per record.")
        return None
    decoded = _decode(raw, report)
    if decoded is None:
        return None
    text, encoding = decoded
    lines = _LINE_BREAK.split(text)
    header_index = next((i for i, ln in enumerate(lines) if ln.strip(_EDGE_SPACE)), None)
    if header_index is None:
        report.add("error", "empty-file", "the file holds only blank space.",
                   "export the dataset again with a header row and one row per record.")
        return None
    # NONMEM datasets often comment the header out ("#ID TIME ..." or "C ID ...") for IGNORE=#.
    header = re.sub(r"^\s*(#|C\s)\s*", "", lines[header_index])
    delimiter = _sniff_delimiter(header)
    if delimiter is None:
        report.add("error", "delimiter", "could not find a column delimiter in the header line (a "
                   f"single column of {len(header)} characters): is this a data file?", "use commas (or ;, tab, |) "
                   "between columns, with the column names on the first line.", line=header_index + 1)
        return None
    header_records = _records([header], 0, delimiter, report)
    records = _records(lines, header_index + 1, delimiter, report)
    if header_records is None or records is None:
        return None
    columns = [c.strip(_EDGE_SPACE) for c in header_records[0].cells]
    if not _check_header(columns, header_index + 1, report):
        return None
    columns, keep = _trailing_empty_columns(columns, records, header_index + 1, report)
    if columns is None:
        return None

    # most files are plain printable ASCII: then no cell needs the per-character check
    plain = _NOT_PLAIN.search(text) is None
    rows, line_numbers = [], []
    skipped_blank, skipped_comment, hashed = [], [], []
    for record in records:
        cells = [c.strip(_EDGE_SPACE) for c in record.cells]
        if not any(cells):
            if len(cells) > 1:  # a row of empty cells (",,,,"); a blank line is no row at all
                skipped_blank.append(record.line)
            continue
        if cells[0].startswith("#") or (comment and cells[0].startswith(comment)):
            if comment and cells[0].startswith(comment):
                skipped_comment.append(record.line)
                continue
            hashed.append(record.line)
        if len(cells) > len(columns) and len(cells) <= len(keep) and not any(cells[len(columns):]):
            cells = cells[:len(columns)]  # the empty cells of the dropped unnamed columns
        if len(cells) != len(columns):
            span = f" (a quoted cell runs from line {record.line} to {record.last}: is a quote left open?)" \
                if record.last > record.line else ""
            hidden = invisible_character("".join(cells), allow_line_breaks=True)
            if hidden:
                span += f" (the row holds the invisible character {hidden})"
            report.add("error", "ragged-row", f"this row has {len(cells)} fields but the header "
                       f"has {len(columns)}{span}.", "make every row have one value per column (quote "
                       "values that contain the delimiter).", line=record.line)
            continue
        for name, cell in zip(columns, () if plain else cells):
            what = invisible_character(cell, allow_line_breaks=True)
            if what:
                report.add("error", "invisible-character", f"the cell holds the invisible character {what}.",
                           "delete the character (it often comes from copying text out of a word "
                           "processor or a web page).", line=record.line, column=name)
        if record.last > record.line:
            report.add("note", "multiline-cell", f"a quoted cell runs over lines {record.line}-{record.last}; "
                       "the record is read as one row.", "", line=record.line)
        rows.append(cells)
        line_numbers.append(record.line)
    if skipped_blank:
        report.add("note", "blank-row", f"{len(skipped_blank)} row(s) with every cell empty were skipped "
                   f"(line(s) {_lines_text(skipped_blank)}).", "", line=skipped_blank[0])
    if skipped_comment:
        report.add("note", "comment-row", f"{len(skipped_comment)} row(s) beginning with {comment!r} were "
                   f"skipped as comments, as asked (line(s) {_lines_text(skipped_comment)}).", "",
                   line=skipped_comment[0])
    if hashed:
        report.add("warning", "hash-row", f"{len(hashed)} row(s) begin with '#' (line(s) {_lines_text(hashed)}); "
                   "they are read as data, not as comments.", "NONMEM's IGNORE=# skips such rows: pass "
                   "comment='#' (--comment '#') to do the same, or remove the '#' if it is part of the value.",
                   line=hashed[0], column=columns[0])
    if not rows:
        if report.ok:
            report.add("error", "header-only", "the file has a header but no data rows.",
                       "add one row per dose, observation or event below the header.")
        return None
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    frame = frame.where(~frame.isin(MISSING), "")
    frame["_line"] = line_numbers
    return RawTable(frame=frame, encoding=encoding, delimiter=delimiter)


def _check_header(columns: list[str], line: int, report: Report) -> bool:
    ok = True
    for position, name in enumerate(columns, start=1):
        what = invisible_character(name)
        if what:
            report.add("error", "header", f"column name {position} ({name!r}) holds the invisible character "
                       f"{what}.", "delete the character from the header.", line=line)
            ok = False
    named = [c for c in columns if c]
    dupes = sorted({c for c in named if named.count(c) > 1})
    if dupes:
        report.add("error", "header", f"the header has duplicate column names: {', '.join(dupes)}.",
                   "give every column a unique name.", line=line)
        ok = False
    folded: dict[str, list[str]] = {}
    for name in named:
        folded.setdefault(name.upper(), []).append(name)
    clashes = [names for names in folded.values() if len(set(names)) > 1]
    if clashes:
        report.add("error", "header", "column names that differ only in case: " + "; ".join(
            " and ".join(sorted(set(names))) for names in clashes) + " (column names are matched without "
            "regard to case).", "rename or delete one of each pair.", line=line)
        ok = False
    if "_line" in columns:
        report.add("error", "header", "the column name '_line' is reserved.", "rename the column.", line=line)
        ok = False
    return ok


def _trailing_empty_columns(columns, records, line, report):
    """Drop unnamed columns at the end of the header when every cell under them is empty (an
    Excel export's padding), with a note; an unnamed column elsewhere, or one with values, is an
    error. Returns (kept column names, all header names) or (None, None)."""
    end = len(columns)
    while end > 0 and columns[end - 1] == "":
        end -= 1
    trailing = len(columns) - end
    for position, name in enumerate(columns[:end], start=1):
        if name == "":
            report.add("error", "header", f"column {position} has no name.",
                       "give every column a name (or delete the empty column).", line=line)
            return None, None
    if trailing:
        filled = next((r for r in records if any(c.strip(_EDGE_SPACE) for c in r.cells[end:])), None)
        if filled is not None:
            report.add("error", "header", f"the header ends with {trailing} unnamed column(s), and line "
                       f"{filled.line} has values under them.", "name those columns or delete the values.",
                       line=line)
            return None, None
        report.add("note", "empty-columns", f"{trailing} unnamed empty column(s) at the end of the header "
                   "(as spreadsheet exports add) were ignored.", "", line=line)
    return columns[:end], columns


def _lines_text(lines: list[int], most: int = 8) -> str:
    shown = ", ".join(map(str, lines[:most]))
    return shown + (f" and {len(lines) - most} more" if len(lines) > most else "")
