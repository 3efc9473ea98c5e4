"""Method benchmarks: peak memory, memory over a no-grad sampling pass, time per optimizer update.

One case = one method at one K on a preset (``mld``: paper size, latent [1, 256], 9-layer VAE and
denoiser, paper-size reward model, guidance 7.5, 50 DDIM steps; ``tiny``: the CPU-sized models), with
the VAE decoder and the reward model in the loop. The models are freshly initialised from a fixed
seed (memory and time do not depend on the weights). The text encoder is the built-in hashed one at
the paper's widths for ``mld`` (768-d sentence for the denoiser, 1024-d tokens for the reward model).

``measure_method_case`` runs in a fresh process per case (``run_methods(isolate=True)``):
1. no-grad pass: DDIM sampling of the batch + decode + reward, once to warm up, once timed, once under
   the memory meters (``nograd_peak_bytes``), before any optimizer exists (inference holds no
   optimizer state);
2. ``warmup`` trainer steps (optimizer state is created), then one trainer step under ``PeakMemory``
   (CUDA) / ``LiveTensorMeter`` (CPU) for ``peak_bytes`` and ``SavedTensorsMeter`` for ``saved_bytes``
   (the most bytes autograd held for backward at once, parameters excluded);
3. ``repeats`` timed trainer steps without meters (``StepRecorder``): ``seconds_per_step`` is the
   median wall time of one trainer step (one trajectory), ``seconds_per_update`` that divided by its
   optimizer updates (EasyTune-K: K per trajectory; the others: 1), ``samples_per_second =
   batch / seconds_per_step``; ``additional_bytes = peak_bytes - nograd_peak_bytes``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from easytune.errors import ConfigError
from easytune.progress import progress

CAPTIONS = (
    "a person walks forward slowly",
    "a person jumps up and down twice",
    "someone turns around to the left",
    "a man waves his right hand",
    "a person runs in a circle",
    "a person sits down on a chair",
    "a person kicks with the left leg",
    "someone crouches and then stands up",
)


@dataclass(frozen=True)
class MethodCase:
    """A method and its count (``easytune.methods.registry``: EasyTune's / DRaFT's / DRTune's K, ReFL's M,
    DRaFT-LV's n; None for AlignProp, which takes none, and for each method's default). ``method`` is
    stored as the method's label (``EasyTune``: the rows' ``method`` field); any registry name is accepted."""

    method: str
    k: int | None = None
    options: tuple[tuple[str, Any], ...] = ()  # other method options, e.g. (("weighting", "snr"),)

    def __post_init__(self) -> None:
        from easytune.methods import registry

        object.__setattr__(self, "method", registry.info(self.method).label)

    @property
    def label(self) -> str:
        from easytune.methods import registry

        return registry.label(self.method, self.k) + "".join(f":{k}={v}" for k, v in self.options)

    def build(self) -> Any:
        from easytune.methods import registry

        entry = registry.info(self.method)
        if self.k is not None and entry.count is None:
            raise ConfigError(f"{entry.label} takes no K (its backprop start is drawn per trajectory)")
        count = {entry.count: self.k} if self.k is not None else {}
        return registry.build(entry.name, **count, **dict(self.options))


def parse_cases(text: str) -> list[MethodCase]:
    """``"easytune-10,draft-50,alignprop,easytune-10:weighting=snr"`` -> cases: method specs of
    ``easytune.methods.registry`` (case-insensitive), comma-separated, each optionally followed by
    ``:option=value`` method options (typed by the registry)."""
    from easytune.methods import registry

    cases = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        spec, *pairs = item.split(":")
        options = []
        for pair in pairs:
            key, sep, value = pair.partition("=")
            opt = registry.options().get(key)
            if not sep or opt is None:
                raise ConfigError(
                    f"--cases: {pair!r} in {item!r} is not OPTION=VALUE with an option among "
                    f"{sorted(registry.options())}"
                )
            try:
                options.append((key, opt.type(value)))
            except ValueError:
                raise ConfigError(
                    f"--cases: {key}={value!r} in {item!r}: not a {opt.type.__name__}"
                ) from None
        try:
            name, count = registry.parse_spec(spec)
        except ConfigError as e:
            raise ConfigError(
                f"--cases: {e} (in {item!r}; expected one of {list(registry.names())} optionally followed by "
                "-K, e.g. easytune-10)"
            ) from None
        cases.append(MethodCase(name, count, tuple(options)))
    if not cases:
        raise ConfigError("--cases: no method given")
    return cases


@dataclass
class Setup:
    """Models, callables and one batch for a preset. The reward path is frozen and the optimizer built by
    ``easytune.training.objective.build_finetuning``, exactly as ``easytune finetune`` does;
    ``trainer(method)`` builds a fresh Trainer + AdamW."""

    preset: str
    device: torch.device
    batch: dict[str, Any]
    pipe: Any  # easytune.generation.MotionPipeline
    reward_model: torch.nn.Module
    objective: Any  # easytune.training.objective.RewardObjective
    seed: int
    checkpoint_frozen: bool = False
    precision: str = "fp32"
    frame_layout: str = "auto"

    @property
    def model(self) -> torch.nn.Module:
        return self.pipe.model

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @property
    def guidance_scale(self) -> float:
        return self.pipe.guidance_scale

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.pipe.latent_shape

    def all_parameters(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.reward_model.parameters()]

    def trainer(self, method: Any, lr: float = 1e-5, compile: str | None = None) -> Any:
        from easytune.trainer import Trainer
        from easytune.training.objective import build_finetuning

        parts = build_finetuning(
            self.pipe,
            self.reward_model,
            lr=lr,
            checkpoint_frozen=self.checkpoint_frozen,
            frame_layout=self.frame_layout,
            precision=self.precision,
        )
        return Trainer(
            parts.objective.denoise,
            self.scheduler,
            parts.objective.reward,
            method=method,
            optimizer=parts.optimizer,
            guidance_scale=self.guidance_scale,
            decode_fn=parts.objective.decode_fn,
            max_grad_norm=1.0,
            latent_shape=self.latent_shape,
            seed=self.seed,
            compile=compile,
        )

    def sample_nograd(self) -> torch.Tensor:
        """Inference on the same batch: guided DDIM sampling, decode, reward; returns the rewards [B]."""
        from easytune.diffusion import ddim_sample

        b, obj = self.batch, self.objective
        g = torch.Generator().manual_seed(self.seed)
        x_T = torch.randn((b["lengths"].shape[0], *self.latent_shape), generator=g).to(self.device)
        with torch.no_grad():
            x0 = ddim_sample(
                obj.denoise, self.scheduler, x_T, b["cond"], b["uncond"], guidance_scale=self.guidance_scale
            )
            return obj.reward(obj.decode(x0, b), b)


def motion_lengths(batch: int, seed: int, low: int = 40, high: int = 196) -> torch.Tensor:
    """Deterministic clip lengths [B] in [low, high] (HumanML3D: 40..196 frames), the first one ``high``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (batch,), generator=g)
    lengths[0] = high
    return lengths


def build_setup(
    preset: str,
    device: str | torch.device,
    batch: int,
    steps: int = 50,
    seed: int = 0,
    checkpoint: str | None = None,
    reward_checkpoint: str | None = None,
    checkpoint_frozen: bool = False,
    precision: str = "fp32",
    frame_layout: str = "auto",
) -> Setup:
    """Models of ``preset`` (``mld`` | ``tiny``) on ``device``, freshly initialised from ``seed`` unless
    ``checkpoint`` (an MLD checkpoint with a config) / ``reward_checkpoint`` (a reward checkpoint or
    ``default``) are given, and a batch of ``batch`` captions with lengths from ``motion_lengths``.
    VAE and reward model are frozen; the denoiser is in eval mode (dropout off: the methods then differ
    only in their gradients). ``checkpoint_frozen``: per-layer activation checkpointing in the VAE and
    the reward model (``easytune.models.layers.set_gradient_checkpointing``); ``frame_layout``: their frames
    padded or packed (``auto``: the measured default of the device type; ``models.packing``)."""
    from easytune.checkpoint import load_checkpoint
    from easytune.diffusion import DDIMScheduler
    from easytune.generation import MotionPipeline
    from easytune.models.families import FAMILIES
    from easytune.models.mld import MLD
    from easytune.models.presets import build_model, get_preset, model_config
    from easytune.models.reward import RewardModel, build_reward_model
    from easytune.text import build_text_encoder
    from easytune.train_utils import seed_everything
    from easytune.training.objective import build_finetuning

    if preset not in ("mld", "tiny"):
        raise ConfigError(f"method benchmarks support presets 'mld' and 'tiny', got {preset!r}")
    if batch < 1 or steps < 1:
        raise ConfigError(f"batch and steps must be >= 1, got batch={batch}, steps={steps}")
    device = torch.device(device)
    seed_everything(seed)
    spec = get_preset(preset)
    text_spec = "builtin:token_dim=1024,sentence_dim=768" if preset == "mld" else spec["text_encoder"]
    if checkpoint is not None:
        text_spec = load_checkpoint(checkpoint).get("config", {}).get("text_encoder", text_spec)
    text = build_text_encoder(text_spec)
    if reward_checkpoint is not None:
        reward_model = RewardModel.from_checkpoint(reward_checkpoint)
    elif preset == "mld":
        reward_model = build_reward_model("paper", text_encoder=build_text_encoder("builtin:token_dim=1024"))
    else:
        reward_model = build_reward_model("tiny")
    model = (
        MLD.from_checkpoint(checkpoint) if checkpoint else build_model(model_config(spec, text.sentence_dim))
    )
    model = model.to(device)
    reward_model = reward_model.to(device)
    scheduler = DDIMScheduler.from_config(spec["scheduler"])
    scheduler.set_timesteps(steps)
    nfeats = model.vae.config.nfeats
    pipe = MotionPipeline(
        family=FAMILIES["mld"],
        model=model,
        text=text,
        scheduler=scheduler,
        guidance_scale=float(spec["guidance_scale"]),
        mean=torch.zeros(nfeats),
        std=torch.ones(nfeats),
    )
    # The same freezing (VAE, reward model), eval mode and activation checkpointing as `easytune finetune`.
    objective = build_finetuning(
        pipe,
        reward_model,
        lr=1e-5,
        checkpoint_frozen=checkpoint_frozen,
        frame_layout=frame_layout,
        precision=precision,
    ).objective
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    data = objective.batch(captions, motion_lengths(batch, seed), device)
    return Setup(
        preset, device, data, pipe, reward_model, objective, seed, checkpoint_frozen, precision, frame_layout
    )


def _optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    from easytune.bench.memory import tensor_bytes

    return tensor_bytes(
        t for st in optimizer.state.values() for t in st.values() if isinstance(t, torch.Tensor)
    )


@dataclass
class PreparedCase:
    """A case after its no-grad pass, warm-up and memory step: ``trainer`` is ready for timed steps and
    ``row`` holds the memory fields."""

    case: MethodCase
    setup: Setup
    trainer: Any
    row: dict[str, Any]


def prepare_method_case(
    preset: str,
    device: str,
    batch: int,
    method: str,
    k: int | None = None,
    steps: int = 50,
    warmup: int = 1,
    seed: int = 0,
    checkpoint_frozen: bool = False,
    precision: str = "fp32",
    compile: str | None = None,
    frame_layout: str = "auto",
) -> PreparedCase:
    """Steps 1-2 of the module docstring: no-grad pass, warm-up, one trainer step under the memory meters."""
    from easytune.bench.memory import LiveTensorMeter, PeakMemory, SavedTensorsMeter, tensor_bytes
    from easytune.bench.timing import time_once
    from easytune.models.packing import resolve_frame_layout

    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    case = MethodCase(method, k)
    setup = build_setup(
        preset,
        device,
        batch,
        steps,
        seed,
        checkpoint_frozen=checkpoint_frozen,
        precision=precision,
        frame_layout=frame_layout,
    )
    dev, cuda = setup.device, setup.device.type == "cuda"
    weights = tensor_bytes(
        [
            *setup.model.parameters(),
            *setup.model.buffers(),
            *setup.reward_model.parameters(),
            *setup.reward_model.buffers(),
        ]
    )
    setup.sample_nograd()
    nograd_seconds, _ = time_once(setup.sample_nograd, dev)
    with PeakMemory(dev) as nograd_device, LiveTensorMeter() as nograd_live:
        setup.sample_nograd()
    trainer = setup.trainer(case.build(), compile=compile)
    warm0 = time.perf_counter()  # compile happens here: reported apart from the timed steps
    for _ in range(warmup):
        trainer.step(setup.batch)
    warmup_seconds = time.perf_counter() - warm0
    # One step under the memory meters (they slow Python down); timing happens in separate steps. Optimizer
    # state that exists before it is added; state created inside it (warmup=0) is seen by the live meter.
    optimizer_bytes = _optimizer_state_bytes(trainer.optimizer)
    with (
        PeakMemory(dev) as device_peak,
        LiveTensorMeter() as live,
        SavedTensorsMeter(exclude=setup.all_parameters()) as saved,
    ):
        trainer.step(setup.batch)
    if cuda:  # the caching allocator's own accounting covers weights, optimizer state and activations
        peak_bytes, nograd_peak, how = device_peak.peak_bytes, nograd_device.peak_bytes, device_peak.method
    else:  # tensor-level accounting: weights + optimizer state + the most bytes alive during the pass
        peak_bytes = weights + optimizer_bytes + live.peak_bytes
        nograd_peak = weights + nograd_live.peak_bytes
        how = "weights + optimizer state + peak live tensors (dispatch mode)"
    row: dict[str, Any] = {
        "method": case.method,
        "k": case.k,
        "label": case.label,
        "preset": preset,
        "device": str(dev),
        "batch": batch,
        "dtype": "bfloat16 autocast" if precision == "bf16" else "float32",
        "ddim_steps": steps,
        "guidance_scale": setup.guidance_scale,
        "checkpoint_frozen": checkpoint_frozen,
        "frame_layout": resolve_frame_layout(frame_layout, dev),
        "precision": precision,
        "compile": compile,
        "warmup_seconds": warmup_seconds,
        "peak_bytes": peak_bytes,
        "nograd_peak_bytes": nograd_peak,
        "additional_bytes": peak_bytes - nograd_peak,
        "saved_bytes": saved.peak_bytes,
        "saved_total_bytes": saved.total_bytes,
        "memory_method": how,
        "weights_bytes": weights,
        "optimizer_state_bytes": optimizer_bytes,
        "peak_rss_bytes": None if cuda else device_peak.peak_bytes,
        "nograd_peak_rss_bytes": None if cuda else nograd_device.peak_bytes,
        "nograd_seconds": nograd_seconds,
        "warmup": warmup,
    }
    return PreparedCase(case, setup, trainer, row)


class StepRecorder:
    """Runs timed trainer steps of a prepared case and turns them into the timing fields (step 3 of the
    module docstring). ``cpu_seconds_*`` (CPU devices only) is the process CPU time of a step, all threads
    summed: unlike wall time it does not grow when other processes share the cores."""

    def __init__(self, prepared: PreparedCase) -> None:
        self.prepared = prepared
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.stats: list[dict[str, float]] = []
        self.grad_steps: list[int] = []

    def step(self) -> None:
        from easytune.bench.timing import time_once

        trainer, data = self.prepared.trainer, self.prepared.setup.batch
        cpu0 = time.process_time()
        seconds, stats = time_once(lambda: trainer.step(data), self.prepared.setup.device)
        self.cpu_times.append(time.process_time() - cpu0)
        self.times.append(seconds)
        self.stats.append(stats)
        self.grad_steps.append(sum(p.grad for p in trainer.last_plan))

    def fields(self) -> dict[str, Any]:
        if not self.times:
            raise ConfigError("StepRecorder.fields: no timed step was run")
        step_s = statistics.median(self.times)
        updates = statistics.median(s["updates"] for s in self.stats)
        out = {
            "seconds_per_step": step_s,
            "step_times_s": self.times,
            "updates_per_step": updates,
            "seconds_per_update": step_s / updates,
            "samples_per_second": self.prepared.row["batch"] / step_s,
            "grad_steps_mean": statistics.fmean(self.grad_steps),
            "repeats": len(self.times),
            "reward": statistics.fmean(s["reward"] for s in self.stats),
        }
        if self.prepared.setup.device.type == "cpu":
            cpu_s = statistics.median(self.cpu_times)
            out.update(cpu_seconds_per_step=cpu_s, cpu_seconds_per_update=cpu_s / updates)
        return out


def measure_method_case(
    preset: str,
    device: str,
    batch: int,
    method: str,
    k: int | None = None,
    steps: int = 50,
    repeats: int = 2,
    warmup: int = 1,
    seed: int = 0,
    checkpoint_frozen: bool = False,
    precision: str = "fp32",
    compile: str | None = None,
    frame_layout: str = "auto",
) -> dict[str, Any]:
    """Measure one case (see the module docstring); returns its result row (without the case id), with
    ``backends``: which backend ran each op during the timed steps (``ops.dispatch.call_counts``)."""
    from easytune.bench.memory import PeakMemory
    from easytune.bench.nvml import NvmlSampler
    from easytune.ops import dispatch

    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    prepared = prepare_method_case(
        preset,
        device,
        batch,
        method,
        k,
        steps,
        warmup,
        seed,
        checkpoint_frozen,
        precision,
        compile,
        frame_layout,
    )
    dev = prepared.setup.device
    cuda = dev.type == "cuda"
    recorder = StepRecorder(prepared)
    dispatch.call_counts(reset=True)
    with NvmlSampler(dev.index or 0) if cuda else _Null() as nvml, PeakMemory(dev) as timed_peak:
        for _ in range(repeats):
            recorder.step()
    row = {**prepared.row, **recorder.fields(), "backends": dispatch.call_counts()}
    if cuda:
        row.update(nvml.summary())
        if timed_peak.peak_bytes > row["peak_bytes"]:  # a random plan (ReFL, DRTune, AlignProp) can vary
            row["peak_bytes"] = timed_peak.peak_bytes
            row["additional_bytes"] = timed_peak.peak_bytes - row["nograd_peak_bytes"]
    return row


def _release_previous_case() -> None:
    """In-process cases: drop what an earlier case left behind (compiled graphs and their CUDA-graph memory
    pools, cached blocks), so this case's peak starts from its own models."""
    import gc

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def run_methods(
    preset: str,
    device: str,
    batch: int | None,
    cases: list[MethodCase],
    steps: int = 50,
    repeats: int = 2,
    warmup: int = 1,
    isolate: bool = True,
    seed: int = 0,
    checkpoint_frozen: bool = False,
    log: Callable[[str], None] = lambda s: None,
    precision: str = "fp32",
    compile: str | None = None,
    show_progress: bool = False,
    frame_layout: str = "auto",
) -> list[dict[str, Any]]:
    """One row per case (``kind: method``); a fresh process per case when ``isolate``. A failing case
    becomes a row with ``status: "failed"`` and the error, and the others still run. Case ids end in
    ``/ckpt`` with ``checkpoint_frozen``."""
    from easytune.bench.isolate import run_isolated
    from easytune.bench.results import BenchCaseError

    batch = batch or (64 if torch.device(device).type == "cuda" else 4)
    rows = []
    for case in progress(cases, total=len(cases), desc="bench methods", unit="case", enabled=show_progress):
        spec = {
            "preset": preset,
            "device": device,
            "batch": batch,
            "method": case.method,
            "k": case.k,
            "steps": steps,
            "repeats": repeats,
            "warmup": warmup,
            "seed": seed,
            "checkpoint_frozen": checkpoint_frozen,
            "precision": precision,
            "compile": compile,
            "frame_layout": frame_layout,
        }
        case_id = f"{case.label}/{preset}/b{batch}/{torch.device(device).type}" + (
            "/ckpt" if checkpoint_frozen else ""
        )
        if precision != "fp32":
            case_id += f"/{precision}"
        if compile:
            case_id += f"/compile-{compile}"
        if frame_layout != "auto":
            case_id += f"/{frame_layout}"
        log(f"[bench methods] {case_id} ...")
        try:
            if isolate:
                row = run_isolated("easytune.bench.methods:measure_method_case", spec)
            else:
                _release_previous_case()
                row = measure_method_case(**spec)
        except (BenchCaseError, ConfigError) as err:
            log(f"[bench methods] {case_id} failed: {err}")
            rows.append(
                {
                    "kind": "method",
                    "case": case_id,
                    "method": case.method,
                    "k": case.k,
                    "preset": preset,
                    "device": device,
                    "batch": batch,
                    "status": "failed",
                    "reason": str(err),
                }
            )
            continue
        rows.append({"kind": "method", "case": case_id, **row})
        log(
            f"[bench methods] {case_id}: peak {row['peak_bytes'] / 2**20:.1f} MiB, additional "
            f"{row['additional_bytes'] / 2**20:.1f} MiB, saved {row['saved_bytes'] / 2**20:.1f} MiB, "
            f"{row['seconds_per_update']:.3f} s/update"
        )
    return rows
