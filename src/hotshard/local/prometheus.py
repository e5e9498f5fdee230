"""A real Prometheus for local mode: generated configuration, 1 s scrapes, loopback only.

The operator reads its numbers from Prometheus, so local mode does too: the demo starts
Debian's ``/usr/bin/prometheus`` with a configuration written here, storage in the run's
temporary directory, and its web listener on 127.0.0.1. Shards come and go during a run (the
warm pool refills, released shards stop), so targets live in a ``file_sd`` JSON file that
:meth:`LocalPrometheus.set_targets` rewrites; Prometheus notices the change by itself. When the
binary is missing, :func:`find_prometheus` says so and the demo falls back to scraping the
services directly.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import yaml

from hotshard.local.processes import LOOPBACK, ServiceProcess

SCRAPE_INTERVAL = "1s"
"""One scrape a second: the engine works in 1 s buckets, so scraping faster buys nothing."""
RETENTION = "1h"
"""A demo lasts minutes; an hour of samples bounds the temporary disk use."""


def find_prometheus() -> str | None:
    """The Prometheus binary: ``$HOTSHARD_PROMETHEUS``, then ``prometheus`` on PATH, else None."""
    candidates = [os.environ.get("HOTSHARD_PROMETHEUS"), shutil.which("prometheus")]
    candidates.append("/usr/bin/prometheus")
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    return None


def render_config(targets_file: Path) -> str:
    """The scrape configuration: one job, targets from ``targets_file``, every second."""
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "hotshard",
                "scrape_interval": SCRAPE_INTERVAL,
                # NB: a scrape must end before the next one starts.
                "scrape_timeout": "900ms",
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def render_targets(services: Mapping[str, str]) -> str:
    """``file_sd`` JSON: one target group per service, labelled with its ``shard`` name."""
    groups = [
        {"targets": [url.removeprefix("http://")], "labels": {"shard": name}}
        for name, url in sorted(services.items())
    ]
    return json.dumps(groups, indent=1)


class LocalPrometheus(ServiceProcess):
    """Prometheus as a supervised process; ready when ``/-/ready`` answers."""

    ready_path = "/-/ready"

    def __init__(self, binary: str, workdir: Path, port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.targets_file = workdir / "targets.json"
        self.config_file = workdir / "prometheus.yml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.targets_file.write_text("[]")
        self.config_file.write_text(render_config(self.targets_file))
        super().__init__(
            "prometheus", [], port=port, log_path=workdir / "prometheus.log", ready_timeout=30.0
        )

    @property
    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--log.level=warn",
        ]

    def set_targets(self, services: Mapping[str, str]) -> None:
        """Replace the scrape targets atomically (Prometheus must never read half a file)."""
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(render_targets(services))
        os.replace(tmp, self.targets_file)
