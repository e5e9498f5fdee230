"""Write the published JSON schemas (``python -m hotshard.schemas``), kept in ``schemas/``.

A unit test checks that the files in the repository match the models, so the schema a user
reads is always the one the code enforces.
"""

from __future__ import annotations

from pathlib import Path

from hotshard.routing.table import write_schema

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def main() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    write_schema(SCHEMA_DIR / "routing-table.json")


if __name__ == "__main__":
    main()
