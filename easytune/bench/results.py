"""Result files: one JSON document per run, ``{"schema", "environment", "rows"}``.

A row is a flat dict of plain values with at least ``kind`` (``method``, ``kernel``,
``time_to_reward``, ``ceilings``) and ``case`` (a stable id: compare matches rows by it). Rows that
could not run carry ``status: "skipped"`` and a ``reason``. ``load_results`` also reads the JSON of
``pytest --benchmark-json`` (bench/ suites put their metrics in ``extra_info`` and the environment in
``machine_info["easytune"]``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easytune.errors import ConfigError, DataError, EasytuneError

SCHEMA = "easytune-bench/1"


class BenchCaseError(EasytuneError, RuntimeError):
    """A benchmark case failed to run (the message names the case and gives the worker's error)."""


@dataclass
class ResultSet:
    """The rows of one result file and the environment they were measured in."""

    path: str
    environment: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def by_case(self) -> dict[tuple[str, str], dict[str, Any]]:
        """``{(kind, case): row}`` (a repeated id keeps its last row)."""
        return {(str(r.get("kind")), str(r.get("case"))): r for r in self.rows}


def json_safe(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no NaN), tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_results(path: str | os.PathLike, rows: list[dict[str, Any]], environment: dict[str, Any]) -> Path:
    """Write a result file (atomically: temporary file + rename); returns its path."""
    for i, row in enumerate(rows):
        if "kind" not in row or "case" not in row:
            raise ConfigError(f"result row {i} needs 'kind' and 'case' fields, got keys {sorted(row)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        json.dumps(json_safe({"schema": SCHEMA, "environment": environment, "rows": rows}), indent=1)
    )
    os.replace(tmp, path)
    return path


def _from_pytest_benchmark(path: str, doc: dict[str, Any]) -> ResultSet:
    machine = doc.get("machine_info") or {}
    env = dict(machine.get("easytune") or {})
    env.setdefault("commit", (doc.get("commit_info") or {}).get("id"))
    env.setdefault("date", doc.get("datetime"))
    env.setdefault("source", "pytest-benchmark")
    rows = []
    for b in doc["benchmarks"]:
        stats = b.get("stats") or {}
        row = dict(b.get("extra_info") or {})
        row.setdefault("kind", b.get("group") or "pytest")
        row.setdefault("case", b.get("fullname") or b.get("name"))
        for name, stat in (
            ("median_s", "median"),
            ("q1_s", "q1"),
            ("q3_s", "q3"),
            ("mean_s", "mean"),
            ("min_s", "min"),
            ("n", "rounds"),
        ):
            if stats.get(stat) is not None:
                row.setdefault(name, stats[stat])
        rows.append(row)
    add_speedups([r for r in rows if r.get("kind") == "kernel" and "speedup" not in r])
    return ResultSet(path, env, rows)


def load_results(path: str | os.PathLike) -> ResultSet:
    """Read an easytune result file or a pytest-benchmark JSON; DataError naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: result file not found")
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{p}: not a JSON result file ({err})") from err
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
        rows = doc.get("rows")
        if not isinstance(rows, list) or not all(
            isinstance(r, dict) and "kind" in r and "case" in r for r in rows
        ):
            raise DataError(f"{p}: field 'rows' must be a list of objects with 'kind' and 'case'")
        return ResultSet(str(p), dict(doc.get("environment") or {}), rows)
    if isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list):
        return _from_pytest_benchmark(str(p), doc)
    raise DataError(
        f"{p}: expected an easytune result file (schema {SCHEMA!r}) or pytest-benchmark JSON "
        "(a 'benchmarks' list)"
    )


# Metrics compare knows, with the direction that counts as better.
LOWER_IS_BETTER = (
    "median_s",
    "seconds_per_update",
    "seconds_per_step",
    "cpu_seconds_per_update",
    "cpu_seconds_per_step",
    "peak_bytes",
    "saved_bytes",
    "additional_bytes",
    "time_to_reward_s",
)
HIGHER_IS_BETTER = ("samples_per_second", "tflops", "gbps", "speedup")


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Set ``speedup`` = baseline median / median on kernel rows sharing (op, shape, dtype, device, pass),
    the baseline being the row whose ``impl`` is its ``baseline_impl``."""

    def key(r: dict[str, Any]) -> tuple:
        return r.get("op"), r.get("shape"), r.get("dtype"), r.get("device"), r.get("pass")

    base = {
        key(r): r["median_s"] for r in rows if r.get("impl") == r.get("baseline_impl") and r.get("median_s")
    }
    for r in rows:
        ref = base.get(key(r))
        if ref and r.get("median_s"):
            r["speedup"] = ref / r["median_s"]
