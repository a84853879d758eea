"""One host's metrics across its workers: a snapshot file per process, merged when any of them is scraped.

With a metrics directory configured, every process writes a snapshot of its values there every
`flush_seconds` (and when it stops), atomically; a scrape served by any of them merges all
snapshots, so one scrape reports the whole host. Counters and histograms of a process that has
gone keep counting in the merge (its file stays), so totals never go backwards when a worker is
replaced; gauges count only live processes, summed, except a state every process reports
(`LowestGauge`, such as `clexproxy_redis_up`), where the host shows its lowest.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson


class SnapshotFiles:
    """The metrics directory as one process sees it: its own snapshot file and everyone else's."""

    def __init__(self, directory: Path, instance: str, gauge_names: frozenset[str], lowest: frozenset[str]) -> None:
        self.directory = directory
        self.instance = instance
        self.gauge_names = gauge_names
        self.lowest = lowest

    def write(self, snapshot: dict[str, dict[str, Any]], stopped: bool = False) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.instance}.json"
        tmp = path.with_suffix(".tmp")
        doc = {"pid": os.getpid(), "time": time.time(), "stopped": stopped, "metrics": snapshot}
        tmp.write_bytes(orjson.dumps(doc))
        tmp.replace(path)  # atomic: a scrape never reads half a file

    def merge_others(self, merged: dict[str, dict[str, Any]]) -> int:
        """Add every other process's snapshot to `merged`; returns how many of them are alive."""
        live = 0
        if not self.directory.is_dir():
            return live
        for path in self.directory.glob("*.json"):
            if path.stem == self.instance:
                continue
            try:
                doc = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            alive = _pid_alive(int(doc.get("pid", 0))) and not doc.get("stopped", False)
            live += alive
            merge_into(merged, doc.get("metrics", {}), self.gauge_names, gauges=alive, lowest=self.lowest)
        return live


def merge_into(
    target: dict[str, dict[str, Any]], snapshot: dict[str, dict[str, Any]], gauge_names: frozenset[str], gauges: bool,
    lowest: frozenset[str] = frozenset(),
) -> None:
    """Add one process's snapshot to the host's totals; its gauges only when `gauges` (the process is alive).

    The gauges named in `lowest` take the smallest value any live process reports instead of the sum.
    """
    for name, series in snapshot.items():
        merged = target.setdefault(name, {})
        if name in lowest:
            if gauges:
                for key, value in series.items():
                    merged[key] = min(merged.get(key, value), value)
            continue
        for key, value in series.items():
            if isinstance(value, list):
                slots = merged.get(key)
                if slots is None:
                    merged[key] = list(value)
                else:
                    for i, v in enumerate(value):
                        slots[i] += v
            elif gauges or name not in gauge_names:
                merged[key] = merged.get(key, 0.0) + value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reset_metrics_dir(metrics_dir: str) -> None:
    """Start a host's run with no snapshots from an earlier run (the process that starts the host calls this)."""
    if not metrics_dir:
        return
    path = Path(metrics_dir)
    path.mkdir(parents=True, exist_ok=True)
    for old in (*path.glob("*.json"), *path.glob("*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
