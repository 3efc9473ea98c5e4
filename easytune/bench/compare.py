"""Regression check of a new result file against a baseline: ``easytune bench compare NEW --baseline OLD``.

Rows are matched by ``(kind, case)``; every metric of ``results.LOWER_IS_BETTER`` /
``results.HIGHER_IS_BETTER`` present (and > 0) in both is compared. A metric regresses when it is
worse than the baseline by more than ``tolerance`` (relative: 0.1 = 10%). Cases present in only one
file are listed, never silently ignored; they fail the check only with ``fail_on_missing``.
"""

from __future__ import annotations

from dataclasses import dataclass

from easytune.bench.results import HIGHER_IS_BETTER, LOWER_IS_BETTER, ResultSet
from easytune.errors import ConfigError


@dataclass(frozen=True)
class Change:
    """One metric of one case: baseline and new value, relative change (new / old - 1) and verdict
    (``regression``, ``improvement`` or ``same``: within tolerance)."""

    kind: str
    case: str
    metric: str
    baseline: float
    new: float
    relative: float
    verdict: str


@dataclass
class Comparison:
    changes: list[Change]
    missing_in_new: list[tuple[str, str]]
    new_only: list[tuple[str, str]]
    tolerance: float

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "regression"]

    def failed(self, fail_on_missing: bool = False) -> bool:
        return bool(self.regressions) or (fail_on_missing and bool(self.missing_in_new))

    def to_markdown(self) -> str:
        lines = [
            f"Tolerance {self.tolerance:.0%}: {len(self.regressions)} regression(s) in "
            f"{len(self.changes)} compared metric(s).",
            "",
            "| kind | case | metric | baseline | new | change | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        order = {"regression": 0, "improvement": 1, "same": 2}
        for c in sorted(self.changes, key=lambda c: (order[c.verdict], c.kind, c.case, c.metric)):
            lines.append(
                f"| {c.kind} | {c.case} | {c.metric} | {c.baseline:.4g} | {c.new:.4g} | "
                f"{c.relative:+.1%} | {c.verdict} |"
            )
        for title, cases in (
            ("Missing in the new results", self.missing_in_new),
            ("Only in the new results", self.new_only),
        ):
            if cases:
                lines += ["", f"{title}:", *[f"- {kind}: {case}" for kind, case in cases]]
        return "\n".join(lines) + "\n"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value > 0 else None


def compare(new: ResultSet, baseline: ResultSet, tolerance: float = 0.1) -> Comparison:
    """Compare every shared case and known metric (see the module docstring)."""
    if not 0 <= tolerance < 10:
        raise ConfigError(f"tolerance must be a relative change in [0, 10), got {tolerance}")
    new_rows, old_rows = new.by_case(), baseline.by_case()
    changes = []
    for key in sorted(old_rows.keys() & new_rows.keys()):
        old, cur = old_rows[key], new_rows[key]
        if {old.get("status"), cur.get("status")} & {"skipped", "failed"}:
            continue
        for metric, lower_better in [(m, True) for m in LOWER_IS_BETTER] + [
            (m, False) for m in HIGHER_IS_BETTER
        ]:
            a, b = _number(old.get(metric)), _number(cur.get(metric))
            if a is None or b is None:
                continue
            rel = b / a - 1
            worse = rel > tolerance if lower_better else rel < -tolerance
            better = rel < -tolerance if lower_better else rel > tolerance
            verdict = "regression" if worse else "improvement" if better else "same"
            changes.append(Change(key[0], key[1], metric, a, b, rel, verdict))
    return Comparison(
        changes,
        sorted(old_rows.keys() - new_rows.keys()),
        sorted(new_rows.keys() - old_rows.keys()),
        tolerance,
    )
