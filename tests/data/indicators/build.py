"""Write the indicator test sets (committed; rebuilt byte for byte by this script):

python -m tests.data.indicators.build
"""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.data.indicators.benign import benign_rows
from tests.data.indicators.injections import known_forms

HERE = Path(__file__).parent


def write(name: str, rows: list[dict[str, str]]) -> None:
    with (HERE / name).open("wb") as out:
        for row in rows:
            out.write(orjson.dumps(row) + b"\n")


if __name__ == "__main__":
    write("injections.jsonl", known_forms())
    write("benign.jsonl", benign_rows())
