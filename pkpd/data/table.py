"""Read a delimited text file into a table of strings, remembering each row's line number.

Problems with the file itself (missing, empty, header only, undecodable, no
delimiter, ragged rows) become findings rather than tracebacks.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .report import Report

MISSING = {"", ".", "NA", "N/A", "NaN", "nan", "NULL", "null"}
_DELIMITERS = [",", ";", "\t", "|"]


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
    report.add("error", "encoding", "the file cannot be decoded as text (binary content or an unknown "
               "encoding).", "export the data as a UTF-8 CSV file (comma-separated, one header row).")
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
    if re.search(r"\S\s+\S", header):  # NONMEM-style whitespace-separated
        return " "
    return None


def read_raw_table(path: str | Path, report: Report) -> RawTable | None:
    """Read `path`; on a file-level problem add an error to `report` and return None."""
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
    lines = text.splitlines()
    # NONMEM datasets often comment the header out ("#ID TIME ..." or "C ID ...") for IGNORE=#.
    header_index = next(i for i, ln in enumerate(lines) if ln.strip())
    header = re.sub(r"^\s*(#|C\s)\s*", "", lines[header_index])
    delimiter = _sniff_delimiter(header)
    if delimiter is None:
        report.add("error", "delimiter", "could not find a column delimiter in the header line "
                   f"{header[:60]!r}: it holds a single column.", "use commas (or ;, tab, |) "
                   "between columns, with the column names on the first line.", line=header_index + 1)
        return None

    def split_all(texts: list[str]) -> list[list[str]]:
        if delimiter == " ":
            return [t.split() for t in texts]
        return list(csv.reader(texts, delimiter=delimiter))

    columns = [c.strip() for c in split_all([header])[0]]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes or "" in columns:
        report.add("error", "header", f"the header has {'duplicate' if dupes else 'empty'} column "
                   f"names{': ' + ', '.join(dupes) if dupes else ''}.",
                   "give every column a unique, non-empty name.", line=header_index + 1)
        return None
    rows, line_numbers = [], []
    body = [i for i in range(header_index + 1, len(lines))
            if lines[i].strip() and not lines[i].lstrip().startswith("#")]
    for i, cells in zip(body, split_all([lines[i] for i in body])):
        cells = [c.strip() for c in cells]
        if len(cells) != len(columns):
            report.add("error", "ragged-row", f"this row has {len(cells)} fields but the header "
                       f"has {len(columns)}.", "make every row have one value per column (quote "
                       "values that contain the delimiter).", line=i + 1)
            continue
        rows.append(cells)
        line_numbers.append(i + 1)
    if not rows:
        if report.ok:
            report.add("error", "header-only", "the file has a header but no data rows.",
                       "add one row per dose, observation or event below the header.")
        return None
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    frame = frame.where(~frame.isin(MISSING), "")
    frame["_line"] = line_numbers
    return RawTable(frame=frame, encoding=encoding, delimiter=delimiter)
