"""Checkpoint I/O: atomic writes, loading without executing pickled code, strict state-dict matching."""

from __future__ import annotations

import os
import tempfile
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from easytune.errors import CheckpointError, ConfigError, NonFiniteError

ASSETS = Path(__file__).resolve().parent / "assets"


def resolve_checkpoint(path: str | os.PathLike, asset: str, what: str) -> Path:
    """``ASSETS / asset`` (an embedded default) for the string ``"default"``, else ``path``.

    Raises ``CheckpointError`` naming ``what`` when the embedded default is missing.
    """
    if str(path) != "default":
        return Path(path)
    default = ASSETS / asset
    if not default.is_file():
        raise CheckpointError(
            f"{default}: the embedded default {what} is missing; rebuild it with "
            "easytune/assets/build_assets.sh or pass a checkpoint path"
        )
    return default


def non_finite_entry(obj: Any, where: str = "") -> str | None:
    """The key path of the first floating tensor in ``obj`` (nested dicts / lists) holding NaN or inf."""
    if isinstance(obj, torch.Tensor):
        return where if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = non_finite_entry(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def check_output_file(
    path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False, option: str = "--out"
) -> Path:
    """Check, before any training step, that a run can write its checkpoint ``path``: not a directory, not
    an existing file unless ``resume`` (continue it) or ``overwrite`` (replace it), and a folder that can
    be written (created if missing). Raises ``ConfigError`` naming ``option``; returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; the run writes one checkpoint file")
    if path.exists() and not resume and not overwrite:
        raise ConfigError(f"{option} {path} exists: pass --resume to continue it or --overwrite to replace")
    check_writable_dir(path.parent, f"{option} {path}")
    return path


def check_writable_dir(folder: str | os.PathLike, shown: str) -> None:
    """Create ``folder`` if missing and write a probe file in it; ConfigError (``shown``: the option and
    value to name) if that fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{shown}: cannot write there ({err.strerror or err})") from None


SAFETENSORS = ".safetensors"


def sidecar_of(path: str | os.PathLike) -> Path:
    """The JSON file beside a ``.safetensors`` checkpoint that holds its ``config`` and ``meta``."""
    return Path(path).with_suffix(".json")


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write a checkpoint dict to a temporary file in the same directory, fsync, then rename over ``path``.

    ``.safetensors``: the ``state_dict`` tensors as safetensors (no pickle at all) and ``config`` / ``meta``
    as JSON beside it (``sidecar_of``: ``model.safetensors`` -> ``model.json``); any other entry (optimizer,
    RNG state) is refused, such checkpoints are ``.pt``. Any other suffix: ``torch.save``.
    A crash mid-write leaves the previous checkpoint intact. A checkpoint with a NaN or inf tensor is never
    written (``NonFiniteError`` naming the tensor; the previous file stays). Returns the final path.
    """
    path = Path(path)
    bad = non_finite_entry(obj)
    if bad is not None:
        raise NonFiniteError(
            f"{path}: not written: tensor {bad} holds NaN or inf values (the previous file, if any, is kept)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == SAFETENSORS:
        return _save_safetensors(obj, path)
    _write_atomic(path, lambda f: torch.save(obj, f))
    return path


def _write_atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_safetensors(obj: Mapping[str, Any], path: Path) -> Path:
    import json

    from safetensors.torch import save

    extra = sorted(set(obj) - {"state_dict", "config", "meta"})
    if extra:
        raise CheckpointError(
            f"{path}: a .safetensors checkpoint holds weights, config and meta only, not {extra} "
            "(write training checkpoints as .pt)"
        )
    # contiguous copies: safetensors refuses views and tensors that share storage (tied weights)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in obj.get("state_dict", {}).items()}
    side = {k: _plain(obj[k], f"{path}: {k}") for k in ("config", "meta") if k in obj}
    blob = save(tensors, metadata={"format": "pt", "writer": "easytune"})
    _write_atomic(path, lambda f: f.write(blob))
    text = json.dumps(side, indent=2, sort_keys=True, allow_nan=False) + "\n"
    _write_atomic(sidecar_of(path), lambda f: f.write(text), mode="w")
    return path


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON data: tensors and arrays as (nested) lists, tuples as lists, paths as strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, where) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise CheckpointError(f"{where}: {type(value).__name__} cannot be written as JSON")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a ``.pt``/``.ckpt`` (``weights_only=True``: no pickled code runs) or ``.safetensors`` file.

    A safetensors file is returned as ``{"state_dict": tensors}`` plus the ``config`` and ``meta`` of its JSON
    sidecar (``sidecar_of``) when there is one (a reference file may have none). Raises ``CheckpointError``
    naming the file when it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_symlink():
            try:
                path.resolve(strict=True)
            except RuntimeError:  # Python < 3.13 reports a loop this way
                raise CheckpointError(f"{path}: a symbolic link loop, not a checkpoint file") from None
            except OSError as err:
                what = "a symbolic link loop" if "loop" in str(err).lower() else "a broken symbolic link"
                raise CheckpointError(f"{path}: {what}, not a checkpoint file") from None
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == SAFETENSORS:
            from safetensors.torch import load_file

            obj = {"state_dict": load_file(str(path), device=str(map_location))}
        else:
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointError(f"{path}: cannot load checkpoint: {_load_error(err)}") from err
    if path.suffix == SAFETENSORS:
        obj.update(_read_sidecar(path))
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return dict(obj)


def _read_sidecar(path: Path) -> dict[str, Any]:
    import json

    side = sidecar_of(path)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{side}: the config beside {path.name} is not readable JSON ({err})") from None
    if not isinstance(data, dict) or set(data) - {"config", "meta"}:
        raise CheckpointError(
            f"{side}: expected a JSON object with 'config' and 'meta', got {str(data)[:80]}"
        )
    return data


class _PlainUnpickler:
    """Reads a pickle of plain data only (str, int, float, bool, None, list, tuple, dict, set): any opcode
    that would import a global (a class, a function: the way pickles run code) is refused."""

    @staticmethod
    def load(path: Path) -> Any:
        import pickle

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                raise pickle.UnpicklingError(f"it refers to {module}.{name}; only plain data is read")

            def persistent_load(self, pid: Any) -> Any:
                raise pickle.UnpicklingError("it holds persistent references; only plain data is read")

        with path.open("rb") as fh:
            return Unpickler(fh).load()


def load_plain_pickle(path: str | os.PathLike, what: str) -> Any:
    """The plain data (lists, dicts, strings, numbers) of the pickle file ``path``; a pickle that would
    import anything (and so could run code) is refused with ``CheckpointError`` naming the file and ``what``
    it should hold. Never ``pickle.load``."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (expected {what})")
    try:
        return _PlainUnpickler.load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise CheckpointError(f"{path}: not a plain-data pickle of {what}: {err}") from None


def _load_error(err: Exception) -> str:
    """What went wrong in a safe load, without torch's advice to load with ``weights_only=False`` (which
    would run pickled code: easytune never does)."""
    text = str(err)
    if "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        reason = detail[0].strip().split(". ")[0] if detail and "WeightsUnpickler error:" in text else ""
        if "Unsupported global" in text:
            return (
                f"it holds pickled objects other than tensors, dicts, lists and numbers ({reason}), which a "
                "safe load refuses (easytune never runs pickled code); re-save it with plain tensors"
            )
        return f"not a valid torch checkpoint ({reason or 'its pickle data is corrupt'})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return f"not a readable torch or safetensors checkpoint ({type(err).__name__}: {first[:200]})"


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys starting with ``prefix`` with the prefix removed (``'denoiser.'`` -> denoiser weights)."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_state_dict_strict(
    module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load ``state_dict`` into ``module`` or raise ``CheckpointError`` listing every problem.

    The message names ``source`` (a file or key prefix) and lists missing keys, unexpected keys and
    keys whose shapes differ (with both shapes).
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    shape = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or extra or shape:
        parts = []
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", extra),
            ("shape mismatches", shape),
        ):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"{title} ({len(items)}): {shown}")
        raise CheckpointError(
            f"{source}: state dict does not match {type(module).__name__}; " + "; ".join(parts)
        )
    module.load_state_dict(state_dict, strict=True)


def build_for_state(
    build: Callable[[], torch.nn.Module],
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    config: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """``build()`` once on the meta device (no memory: a config saying ``ff_size=2e9`` costs nothing), its
    tensor shapes checked against ``state_dict``, then built for real: a checkpoint whose config does not
    match its own weights is refused (``CheckpointError`` naming ``source``, the tensors and, given the
    ``config`` it was built from, the integer fields whose values only the wrong shapes hold) before
    anything is allocated."""
    try:
        with torch.device("meta"):
            probe = build()
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from None
    own = probe.state_dict()
    shape = sorted(
        f"{k}: weights {tuple(state_dict[k].shape)}, config {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if shape:
        shown = ", ".join(shape[:6]) + (f", ... ({len(shape) - 6} more)" if len(shape) > 6 else "")
        suspects = _suspect_fields(config or {}, own, state_dict)
        named = (
            f"config {', '.join(suspects)} contradicts its weights"
            if suspects
            else "its config does not match its weights"
        )
        raise CheckpointError(f"{source}: {named} ({shown})")
    return build()


def _suspect_fields(
    config: Mapping[str, Any], own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]
) -> list[str]:
    """``name=value`` for the integer fields of ``config`` (nested: dotted names) whose value is a size of a
    tensor the config builds wrongly and of no tensor of the checkpoint."""
    wrong = [k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    config_sizes = {n for k in wrong for n in own[k].shape}
    weight_sizes = {n for v in state_dict.values() for n in v.shape}

    def flat(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
        items = []
        for k, v in d.items():
            items += flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else [(f"{prefix}{k}", v)]
        return items

    return [
        f"{name}={value}"
        for name, value in flat(config)
        if isinstance(value, int)
        and not isinstance(value, bool)
        and value in config_sizes
        and value not in weight_sizes
    ]


class ConfigCheckpointMixin:
    """For modules with a dataclass ``config``: ``checkpoint(meta)`` gives ``{"state_dict", "config",
    "meta"}`` (the easytune layout, tensors on the CPU) and ``save(path, meta)`` writes it atomically."""

    config: Any

    def checkpoint(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},  # type: ignore[attr-defined]
            "config": asdict(self.config),
            "meta": dict(meta or {}),
        }

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
        return save_atomic(self.checkpoint(meta), path)


# Training options that may change when a run is resumed (a longer run, other logging).
RESUMABLE_CHANGES = ("steps", "log_every", "ckpt_every")


def config_from_dict(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """The config dataclass ``cls`` from a plain dict (a checkpoint's ``config`` entry or a preset): unknown
    fields and non-integer sizes are refused with ``ConfigError`` naming ``where`` (the file and key) and the
    field; the dataclass's own checks run in its ``__post_init__``. The one loader of every model config."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} fields {unknown} (known: {sorted(known)})")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():  # sizes are integers: a float (2e9) is refused before any build
        if hints[name] is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{name} must be an integer, got {value!r}")
    return cls(**values)


def model_state_dict(
    ckpt: Mapping[str, Any], path: str | os.PathLike, use_ema: bool
) -> dict[str, torch.Tensor]:
    """A checkpoint's ``state_dict``, with its ``ema`` weights (same key names) laid over when ``use_ema``."""
    if "state_dict" not in ckpt or not isinstance(ckpt["state_dict"], Mapping):
        raise CheckpointError(f"{path}: expected a 'state_dict' entry with the model weights")
    state = dict(ckpt["state_dict"])
    if use_ema and isinstance(ckpt.get("ema"), Mapping):
        state.update(ckpt["ema"])
    return state


def load_training_checkpoint(
    path: str | os.PathLike, train_config: dict[str, Any], stage: str | None = None
) -> dict[str, Any]:
    """The training checkpoint at ``path`` for resuming a run with options ``train_config`` (compared with
    its ``meta.train_config`` except ``RESUMABLE_CHANGES``) and, when given, ``meta.stage``. Raises
    ``CheckpointError`` without optimizer state, ``ConfigError`` listing (saved, now) on a mismatch."""
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{path}: not a training checkpoint (no optimizer state); cannot resume")
    meta = ckpt.get("meta", {})
    saved = dict(meta.get("train_config", {}))
    mismatch = {
        k: (saved.get(k), v)
        for k, v in train_config.items()
        if k not in RESUMABLE_CHANGES and saved.get(k) != v
    }
    if stage is not None and meta.get("stage") != stage:
        mismatch["stage"] = (meta.get("stage"), stage)
    if mismatch:
        raise ConfigError(f"{path}: cannot resume, the training options differ (saved, now): {mismatch}")
    return ckpt
