"""Time to reward: the training time each method needs to lift the reward to given levels.

Every method starts from the same models (same seed or checkpoints) and trains on the same batch of
synthetic captions for ``budget_s`` seconds of training time (process CPU seconds on a CPU device, wall
seconds on a GPU: the row's ``clock``). After every trainer step the clock is paused and the reward of
the current weights is evaluated: guided DDIM sampling from a fixed noise (another seed than
training) of the same captions, decoded, scored by the reward model, averaged. ``time_to_reward_s``
is the training time at the first evaluation at or above the level (None: not reached within the
budget); ``wall_time_to_reward_s`` the same in wall seconds. Levels default to the start reward plus
``DEFAULT_DELTAS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from easytune.bench.methods import MethodCase, build_setup
from easytune.errors import ConfigError

DEFAULT_DELTAS = (0.05, 0.1, 0.2)
EVAL_SEED_OFFSET = 1000


def reward_curve(
    preset: str,
    device: str,
    batch: int,
    method: str,
    k: int | None,
    budget_s: float,
    steps: int = 50,
    lr: float = 1e-4,
    seed: int = 0,
    checkpoint: str | None = None,
    reward_checkpoint: str | None = None,
    max_steps: int = 10_000,
    options: tuple[tuple[str, Any], ...] = (),
) -> dict[str, Any]:
    """Train one method for ``budget_s`` seconds of training time (paused during evaluations), measured
    on the run's clock: process CPU seconds on a CPU device (other processes sharing the cores do not
    eat into a method's budget), wall seconds on a GPU. Returns ``{"clock", "wall_s": [...],
    "cpu_s": [...], "reward": [...], "trainer_steps", "updates"}``, starting at (0, start reward)."""
    from easytune.bench.timing import time_once

    if budget_s <= 0:
        raise ConfigError(f"budget_s must be > 0 seconds, got {budget_s}")
    setup = build_setup(preset, device, batch, steps, seed, checkpoint, reward_checkpoint)
    eval_setup_seed = seed + EVAL_SEED_OFFSET
    clock = "cpu" if setup.device.type == "cpu" else "wall"

    def evaluate() -> float:
        setup.seed = eval_setup_seed
        try:
            return float(setup.sample_nograd().mean())
        finally:
            setup.seed = seed

    trainer = setup.trainer(MethodCase(method, k, options).build(), lr=lr)
    wall, cpu, rewards, updates, n = [0.0], [0.0], [evaluate()], 0, 0
    while (cpu if clock == "cpu" else wall)[-1] < budget_s and n < max_steps:
        cpu0 = time.process_time()
        seconds, stats = time_once(lambda: trainer.step(setup.batch), setup.device)
        cpu.append(cpu[-1] + time.process_time() - cpu0)
        wall.append(wall[-1] + seconds)
        updates += int(stats["updates"])
        n += 1
        rewards.append(evaluate())
    return {
        "clock": clock,
        "wall_s": wall,
        "cpu_s": cpu,
        "reward": rewards,
        "trainer_steps": n,
        "updates": updates,
    }


def first_reach(
    wall: Sequence[float], reward: Sequence[float], level: float
) -> tuple[float | None, int | None]:
    """(time, evaluation index) of the first reward >= ``level``; (None, None) if never."""
    for i, (t, r) in enumerate(zip(wall, reward)):
        if r >= level:
            return t, i
    return None, None


def level_rows(curve_row: dict[str, Any], levels: Sequence[float]) -> list[dict[str, Any]]:
    """The ``time_to_reward`` rows of one ``reward_curve`` row, one per level (also for levels chosen
    after the run: ``easytune bench report --levels``)."""
    common = {
        k: curve_row.get(k) for k in ("method", "preset", "device", "batch", "lr", "budget_s", "start_reward")
    }
    clock = curve_row.get("clock", "wall")
    out = []
    for level in levels:
        t, i = first_reach(curve_row[f"{clock}_s"], curve_row["reward"], level)
        wall_t, _ = first_reach(curve_row["wall_s"], curve_row["reward"], level)
        out.append(
            {
                "kind": "time_to_reward",
                "case": f"{curve_row['case']}/{level:g}",
                **common,
                "clock": clock,
                "level": level,
                "time_to_reward_s": t,
                "wall_time_to_reward_s": wall_t,
                "trainer_steps_to_reward": i,
            }
        )
    return out


def run_time_to_reward(
    preset: str,
    device: str,
    batch: int,
    cases: list[MethodCase],
    levels: list[float] | None,
    budget_s: float,
    steps: int = 50,
    lr: float = 1e-4,
    seed: int = 0,
    checkpoint: str | None = None,
    reward_checkpoint: str | None = None,
    log: Callable[[str], None] = lambda s: None,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """Rows: one ``reward_curve`` per method and one ``time_to_reward`` per (method, level)."""
    from easytune.progress import progress

    rows: list[dict[str, Any]] = []
    start_reward = None
    bar = progress(cases, total=len(cases), desc="time-to-reward", unit="method", enabled=show_progress)
    for case in bar:
        log(f"[bench time-to-reward] {case.label}: training for {budget_s:g} s ...")
        curve = reward_curve(
            preset,
            device,
            batch,
            case.method,
            case.k,
            budget_s,
            steps,
            lr,
            seed,
            checkpoint,
            reward_checkpoint,
            options=case.options,
        )
        if start_reward is None:
            start_reward = curve["reward"][0]
            levels = levels or [round(start_reward + d, 4) for d in DEFAULT_DELTAS]
            log(f"[bench time-to-reward] start reward {start_reward:.4f}; levels {levels}")
        curve_row = {
            "kind": "reward_curve",
            "case": f"{case.label}/{preset}/b{batch}",
            "method": case.label,
            "preset": preset,
            "device": device,
            "batch": batch,
            "lr": lr,
            "budget_s": budget_s,
            "start_reward": curve["reward"][0],
            **curve,
        }
        rows += [curve_row, *level_rows(curve_row, levels)]
        log(
            f"[bench time-to-reward] {case.label}: final reward {curve['reward'][-1]:.4f} after "
            f"{curve['trainer_steps']} steps / {curve['updates']} updates"
        )
    return rows
