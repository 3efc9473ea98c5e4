"""Several rewards at once: ``Composite`` of weighted terms, and differentiable motion-quality rewards.

A reward term is ``fn(feats, batch) -> Tensor [B]`` (higher is better), ``feats`` the decoded, normalised
motion features [B, T, 263] that the trainer's ``reward_fn`` receives, ``batch["lengths"]`` the valid frames.
``Composite([(weight, fn, name), ...])`` returns ``sum_i weight_i * fn_i`` per sample and keeps each term's
batch mean (detached, on the device) so that the trainer reports every term (``reward/<name>`` in its
stats, metrics.jsonl and TensorBoard) with its one read per trajectory.

Motion-quality terms (``QUALITY``): features de-normalised with the dataset Mean/Std, joints from
``recover_from_ric`` (y up, metres, 20 fps), valid frames only, the feet being the ankles and toes
(joints 7, 8, 10, 11 of the SMPL 22-joint skeleton). Each is the negative of a cost, averaged per sample:

- ``foot_skate``: horizontal foot speed (m/frame) weighted by a soft contact, ``sigmoid((h0 - height) /
  0.01)`` with ``h0 = CONTACT_HEIGHT`` (0.05 m): a foot near the floor should not slide.
- ``penetration``: how far the lowest foot goes below the floor (y = 0), ``relu(-min_foot_height)``.
- ``floating``: how far the lowest foot stays above the floor, ``relu(min_foot_height - CONTACT_HEIGHT)``.
- ``jitter``: the mean joint acceleration magnitude (m/frame^2), second differences of the positions.

``quality_metrics`` gives the same quantities as evaluation metrics (foot-skating ratio: the fraction of
foot-frames in contact, height below ``CONTACT_HEIGHT``, that move more than ``SKATE_SPEED`` horizontally;
penetration and floating in cm; jitter), for ``easytune eval``'s table and the ground-truth row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from easytune.errors import ConfigError

RewardFn = Callable[[torch.Tensor, Any], torch.Tensor]
FEET = (7, 10, 8, 11)  # left ankle, left toes, right ankle, right toes (HumanML3D's contact order)
CONTACT_HEIGHT = 0.05  # metres: a foot below this is on the floor (the standard foot-skating threshold)
SKATE_SPEED = 0.025  # metres per frame (0.5 m/s at 20 fps): a foot on the floor moving faster skates


def valid_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """bool [B, frames]: frame ``t`` of sample ``b`` is valid iff ``t < lengths[b]``."""
    return torch.arange(frames, device=lengths.device)[None] < lengths[:, None]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``x`` [B, T] over ``mask`` [B, T] (at least one frame counted)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1)


def joints_of(feats: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Joint positions [B, T, 22, 3] of normalised features [B, T, 263] (differentiable)."""
    from easytune.data.features import recover_from_ric

    return recover_from_ric(feats * std.to(feats) + mean.to(feats))


def foot_skate_cost(joints: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B]: soft-contact-weighted horizontal foot speed (m/frame) over valid frame pairs."""
    feet = joints[:, :, list(FEET)]  # [B, T, 4, 3]
    speed = (feet[:, 1:, :, [0, 2]] - feet[:, :-1, :, [0, 2]]).norm(dim=-1)  # [B, T-1, 4]
    contact = torch.sigmoid((CONTACT_HEIGHT - feet[:, 1:, :, 1]) / 0.01)
    pair_ok = valid_mask(lengths - 1, speed.shape[1])
    return _masked_mean((contact * speed).mean(-1), pair_ok)


def penetration_cost(joints: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B]: mean depth (m) of the lowest foot below the floor (y = 0) over valid frames."""
    lowest = joints[:, :, list(FEET), 1].min(-1).values
    return _masked_mean(torch.relu(-lowest), valid_mask(lengths, joints.shape[1]))


def floating_cost(joints: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B]: mean height (m) of the lowest foot above ``CONTACT_HEIGHT`` over valid frames."""
    lowest = joints[:, :, list(FEET), 1].min(-1).values
    return _masked_mean(torch.relu(lowest - CONTACT_HEIGHT), valid_mask(lengths, joints.shape[1]))


def jitter_cost(joints: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B]: mean joint acceleration magnitude (m/frame^2) over valid frame triples."""
    acc = (joints[:, 2:] - 2 * joints[:, 1:-1] + joints[:, :-2]).norm(dim=-1).mean(-1)  # [B, T-2]
    return _masked_mean(acc, valid_mask(lengths - 2, acc.shape[1]))


COSTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "foot_skate": foot_skate_cost,
    "penetration": penetration_cost,
    "floating": floating_cost,
    "jitter": jitter_cost,
}
QUALITY = tuple(COSTS)


class QualityReward:
    """``-cost`` of one motion-quality term (``COSTS``) on normalised features, de-normalised with
    ``mean`` / ``std`` [263]."""

    def __init__(self, name: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        if name not in COSTS:
            raise ConfigError(f"unknown quality reward {name!r}: choose among {list(COSTS)}")
        self.name, self.cost = name, COSTS[name]
        self.mean, self.std = torch.as_tensor(mean).float(), torch.as_tensor(std).float()

    def __call__(self, feats: torch.Tensor, batch: Any) -> torch.Tensor:
        return -self.cost(joints_of(feats, self.mean, self.std), batch["lengths"])


class Composite:
    """``terms``: ``(weight, fn, name)``; the reward is ``sum weight * fn(feats, batch)`` [B]. Each call
    keeps every term's batch mean (detached, no host read); ``pop_terms()`` returns and clears them."""

    def __init__(self, terms: Sequence[tuple[float, RewardFn, str]]) -> None:
        if not terms:
            raise ConfigError("a composite reward needs at least one term")
        names = [name for _, _, name in terms]
        if len(set(names)) != len(names):
            raise ConfigError(f"composite reward: term names repeat: {names}")
        for weight, _, name in terms:
            if not isinstance(weight, int | float) or weight != weight or abs(weight) == float("inf"):
                raise ConfigError(
                    f"composite reward: the weight of {name!r} must be a finite number, got {weight}"
                )
        self.terms = [(float(w), fn, name) for w, fn, name in terms]
        self._log: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    @property
    def names(self) -> list[str]:
        return [name for _, _, name in self.terms]

    def __call__(self, feats: torch.Tensor, batch: Any) -> torch.Tensor:
        total = None
        for weight, fn, name in self.terms:
            value = fn(feats, batch)
            self._log[name].append(value.detach().mean())
            total = weight * value if total is None else total + weight * value
        return total

    def pop_terms(self) -> dict[str, list[torch.Tensor]]:
        """Each term's batch means since the last call (0-d device tensors), then forgotten."""
        out = {name: values for name, values in self._log.items() if values}
        self._log = {name: [] for name in self._log}
        return out


def parse_term(text: str) -> tuple[str, float]:
    """``"foot_skate:0.5"`` -> ``("foot_skate", 0.5)``; ``"spl"`` -> ``("spl", 1.0)``."""
    name, sep, weight = text.partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"--reward-term {text!r}: expected NAME[:WEIGHT], e.g. foot_skate:0.5")
    try:
        value = float(weight) if sep else 1.0
    except ValueError:
        raise ConfigError(f"--reward-term {text!r}: the weight {weight!r} is not a number") from None
    if value != value or abs(value) == float("inf"):
        raise ConfigError(f"--reward-term {text!r}: the weight must be finite")
    return name, value


@torch.no_grad()
def quality_metrics(joints: Sequence[torch.Tensor]) -> dict[str, float]:
    """Evaluation metrics of motions ``joints`` (each [T_i, 22, 3], metres, y up): ``Skating`` (ratio of
    foot-frames on the floor that slide, see the module docstring), ``Penetration`` and ``Floating`` (cm,
    mean over frames), ``Jitter`` (m/frame^2, mean over frames)."""
    skating, contact, pen, flo, jit = 0.0, 0.0, [], [], []
    for j in joints:
        j = torch.as_tensor(j, dtype=torch.float64)
        feet = j[:, list(FEET)]
        on_floor = feet[1:, :, 1] < CONTACT_HEIGHT
        speed = (feet[1:, :, [0, 2]] - feet[:-1, :, [0, 2]]).norm(dim=-1)
        skating += float((on_floor & (speed > SKATE_SPEED)).sum())
        contact += float(on_floor.sum())
        lowest = feet[:, :, 1].min(-1).values
        pen.append(float(torch.relu(-lowest).mean()) * 100)
        flo.append(float(torch.relu(lowest - CONTACT_HEIGHT).mean()) * 100)
        if len(j) > 2:
            jit.append(float((j[2:] - 2 * j[1:-1] + j[:-2]).norm(dim=-1).mean()))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "Skating": skating / contact if contact else 0.0,
        "Penetration": mean(pen),
        "Floating": mean(flo),
        "Jitter": mean(jit),
    }
