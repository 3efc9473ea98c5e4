"""Run one benchmark case in a fresh Python process, so that its peak RSS and allocator state are its
own (``python -m easytune.bench.isolate TARGET IN.json OUT.json``).

``TARGET`` is ``"package.module:function"``; the function is called with the keyword arguments
read from ``IN.json`` and must return a JSON-serialisable dict, written to ``OUT.json`` with
``process_peak_rss_bytes`` (the worker's lifetime peak resident set) added.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from easytune.bench.results import BenchCaseError, json_safe


def run_isolated(target: str, kwargs: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
    """Call ``target(**kwargs)`` in a child interpreter; its result dict (plus the process peak RSS).

    Raises ``BenchCaseError`` with the child's last stderr lines when it fails or times out.
    """
    with tempfile.TemporaryDirectory(prefix="easytune-bench-") as tmp:
        src, dst = Path(tmp, "in.json"), Path(tmp, "out.json")
        src.write_text(json.dumps(kwargs))
        cmd = [sys.executable, "-m", "easytune.bench.isolate", target, str(src), str(dst)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy()
            )
        except subprocess.TimeoutExpired as err:
            raise BenchCaseError(f"{target}({kwargs}) did not finish within {timeout_s} s") from err
        if proc.returncode != 0 or not dst.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise BenchCaseError(
                f"{target}({kwargs}) failed in its worker process (exit {proc.returncode}):\n{tail}"
            )
        return json.loads(dst.read_text())


def _main(argv: list[str]) -> int:
    target, src, dst = argv
    module_name, _, func_name = target.partition(":")
    fn = getattr(importlib.import_module(module_name), func_name)
    result = dict(fn(**json.loads(Path(src).read_text())))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["process_peak_rss_bytes"] = maxrss if sys.platform == "darwin" else maxrss * 1024
    Path(dst).write_text(json.dumps(json_safe(result)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
