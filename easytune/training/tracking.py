"""What every trainer writes while it runs: one run directory layout, the same for every stage.

::

    RUN_DIR/metrics.jsonl   one JSON object per step: {"step": s, <stat>: value, ...}
    RUN_DIR/tb/             TensorBoard events: every stat as a scalar (tag = its name), sample frames as
                            images (when the ``tensorboard`` package is installed; else a log line says so)
    RUN_DIR/samples/        generation stages: GIFs (and frame strips) of fixed prompts at each evaluation
    RUN_DIR/config.yaml     the resolved options: ``--config RUN_DIR/config.yaml`` repeats the run
    wandb (optional)        ``--wandb PROJECT``: the same scalars and config (``WANDB_MODE=offline`` works
                            without network; the files go to RUN_DIR/wandb)

Fine-tuning's RUN_DIR is its ``--out``; a command that writes one checkpoint file ``OUT`` (pretraining, reward
and evaluator training) uses ``OUT.logs/`` (``run_dir_of``). On resume the log keeps exactly the steps of the
checkpoint it resumes from: lines logged after it (by a run killed later) are dropped, and TensorBoard purges
its events after that step. The metrics file is rewritten atomically (a kill at any moment leaves the old or
the new log) before new lines are appended.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from easytune.errors import ConfigError

log = logging.getLogger("easytune.tracking")

METRICS = "metrics.jsonl"


def run_dir_of(out: str | os.PathLike) -> Path:
    """The run directory of a command that writes the single checkpoint file ``out``: ``OUT.logs/``."""
    return Path(f"{out}.logs")


def read_metrics(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``directory/metrics.jsonl`` (none when the file does not exist); a line that is not JSON
    is refused naming the file and the line."""
    path = Path(directory) / METRICS
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{i}: not a JSON line ({err.msg})") from None
    return rows


class RunLog:
    """The metrics of a run in ``directory`` (see the module docstring), from step ``start`` on.

    ``rows``: the checkpointed rows to keep (fine-tuning stores them in its checkpoint); unset, the existing
    file's rows with ``step <= start`` are kept. ``config``: written as ``config.yaml`` (a config dataclass)
    and sent to wandb. ``wandb``: a project name (lazily imported; a clear error when it is missing).
    Only the main process of a multi-process run should make one (``enabled=False`` elsewhere).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        start: int = 0,
        rows: list[dict[str, Any]] | None = None,
        config: Any = None,
        wandb: str | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if rows is None:
            rows = [r for r in read_metrics(self.directory) if r.get("step", 0) <= start]
        self._file = _rewrite(self.directory / METRICS, rows)
        if config is not None:
            from easytune.config import write_yaml

            write_yaml(config, self.directory / "config.yaml")
        self._tb = _tensorboard(self.directory / "tb", start) if tensorboard else None
        self._wandb = _wandb(wandb, self.directory, config, start) if wandb else None

    def log(self, step: int, stats: Mapping[str, Any]) -> None:
        """One row ``{"step": step, **stats}``: appended to metrics.jsonl (flushed); numbers to
        TensorBoard and wandb."""
        row = {"step": step, **stats}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        numbers = {k: v for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def image(self, tag: str, step: int, path: str | os.PathLike) -> None:
        """An image file (e.g. a strip of sample frames) to TensorBoard and wandb under ``tag``."""
        if self._tb is None and self._wandb is None:
            return
        import numpy as np
        from PIL import Image

        pixels = np.asarray(Image.open(path).convert("RGB"))
        if self._tb is not None:
            self._tb.add_image(tag, pixels, step, dataformats="HWC")
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(pixels)}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rewrite(path: Path, rows: list[dict[str, Any]]):
    """``path`` holding exactly ``rows``, rewritten atomically (temp file + rename), opened for appending."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.open("a", encoding="utf-8")


def _tensorboard(directory: Path, start: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed (pip install tensorboard): metrics go to metrics.jsonl only")
        return None
    # purge_step: events logged after the resumed checkpoint by a run killed later are discarded
    return SummaryWriter(str(directory), purge_step=start + 1 if start else None)


def _wandb(project: str, directory: Path, config: Any, start: int) -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            f"--wandb {project}: the wandb package is not installed (pip install wandb; "
            "WANDB_MODE=offline logs without network)"
        ) from None
    from easytune.config import to_dict

    values = to_dict(config) if config is not None else {}
    return wandb.init(project=project, dir=str(directory), config=values, resume="allow" if start else None)
