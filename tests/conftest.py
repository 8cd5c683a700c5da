from pathlib import Path

import pytest

from pkpd.resources import example_data

ROOT = Path(__file__).resolve().parents[1]

# A small valid NONMEM-style file (line numbers in comments): subject 1 has a baseline B-cell
# count, a dose, and transgene samples; subject 2 likewise.
VALID_NONMEM = """\
ID,TIME,DV,AMT,EVID,MDV,DVID,CENS,LLOQ,WT,PRODUCT,LD
1,-1,120,0,0,0,7,0,1,70,CD19,1
1,0,.,3e8,1,1,.,0,.,70,CD19,1
1,3,5000,0,0,0,1,0,50,70,CD19,1
1,7,20000,0,0,0,1,0,50,70,CD19,1
1,7,2,0,0,0,7,0,1,70,CD19,1
2,-1,200,0,0,0,7,0,1,60,CD19/BCMA,0
2,0,.,1e6,1,1,.,0,.,60,CD19/BCMA,0
2,3,50,0,0,0,1,1,50,60,CD19/BCMA,0
2,7,800,0,0,0,1,0,50,60,CD19/BCMA,0
"""


@pytest.fixture
def write(tmp_path):
    """Write text (or bytes) to a file in tmp_path and return its path."""

    def _write(content, name="data.csv"):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


def replace_line(text: str, line: int, old: str, new: str) -> str:
    """Replace `old` by `new` in 1-based line `line` of `text` (the header is line 1)."""
    lines = text.splitlines()
    assert old in lines[line - 1], (old, lines[line - 1])
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def example_nonmem():
    return example_data("nonmem")


@pytest.fixture(scope="session")
def example_adam():
    return example_data("adam")
