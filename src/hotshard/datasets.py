"""Readers for the real input in ``shared/data``: OpenRTB bid requests and traffic traces.

Nobody on the team wrote this data (each folder's ``SOURCES.md`` says where it comes from), so
the demo, the tests and the benchmarks exercise hotshard on real shapes: real request bodies,
real key popularity and real spikes. The folder is found through ``HOTSHARD_DATA`` or, by
default, ``../shared/data`` beside the checkout (where CI puts it).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


class DataNotFoundError(FileNotFoundError):
    """The shared data folder is missing."""


def data_root() -> Path:
    """The ``shared/data`` folder: ``$HOTSHARD_DATA``, else ``../shared/data`` beside the repo."""
    env = os.environ.get("HOTSHARD_DATA")
    candidates = (
        [Path(env)]
        if env
        else [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    )
    for path in candidates:
        if (path / "openrtb").is_dir():
            return path
    tried = list(dict.fromkeys(str(p) for p in candidates))  # the guesses coincide from the repo
    raise DataNotFoundError(
        f"cannot find the shared data folder (tried {', '.join(tried)}); set HOTSHARD_DATA to "
        "the folder that holds openrtb/ and traces/"
    )


@dataclass(frozen=True)
class BidRequestSample:
    """One OpenRTB bid request from the corpus."""

    name: str
    body: dict[str, Any]
    raw: bytes
    tmax: int | None


@cache
def openrtb_requests(root: Path | None = None) -> tuple[BidRequestSample, ...]:
    """Every OpenRTB request under ``openrtb/``, sorted by file name."""
    base = (root or data_root()) / "openrtb"
    samples = []
    for path in sorted(base.glob("*/*.json")):
        raw = path.read_bytes()
        body = json.loads(raw)
        tmax = body.get("tmax")
        samples.append(
            BidRequestSample(
                name=str(path.relative_to(base)),
                body=body,
                raw=raw,
                tmax=tmax if isinstance(tmax, int) else None,
            )
        )
    return tuple(samples)


def _traces(root: Path | None) -> Path:
    return (root or data_root()) / "traces"


@cache
def worldcup98_per_minute(root: Path | None = None) -> tuple[tuple[str, int], ...]:
    """``(minute, requests)`` for the 1998 World Cup site, 125,300 minutes."""
    path = _traces(root) / "worldcup98" / "wc98_requests_per_minute.csv"
    with path.open(newline="") as f:
        return tuple((row["minute"], int(row["count"])) for row in csv.DictReader(f))


@cache
def azure_functions_per_minute(root: Path | None = None) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``(function hash, 1,440 per-minute invocation counts)`` for 1,000 Azure Functions."""
    path = (
        _traces(root)
        / "azure_functions_2019"
        / "azure_functions_2019_1000fn_invocations_per_minute.csv"
    )
    out = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        first = header.index("minute_1")
        for row in reader:
            out.append((row[0], tuple(int(float(v)) for v in row[first:])))
    return tuple(out)


@cache
def wikipedia_top100_election(root: Path | None = None) -> tuple[tuple[str, int], ...]:
    """``(article, views)`` for the 100 most-viewed English Wikipedia articles on 2016-11-09."""
    path = _traces(root) / "wikipedia" / "enwiki_top100_2016-11-09.csv"
    with path.open(newline="") as f:
        return tuple((row["article"], int(row["views"])) for row in csv.DictReader(f))


@cache
def wikipedia_election_daily(root: Path | None = None) -> tuple[dict[str, str], ...]:
    """Rows ``date,row_type,article,rank,views`` around the 2016 US election."""
    path = _traces(root) / "wikipedia" / "enwiki_election2016_daily_views.csv"
    with path.open(newline="") as f:
        return tuple(csv.DictReader(f))
