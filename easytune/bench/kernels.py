"""Kernel benchmarks: attention, the fused guidance + DDIM step and the reward head, each against
its baselines, forward / backward / both.

- attention (self-attention with key and query padding by lengths): every backend registered in
  ``easytune.ops.dispatch`` (``ops:<backend>``), torch SDPA with the boolean mask (the baseline,
  ``sdpa-mask``), SDPA forced onto its math path (``sdpa-math``), FlexAttention (compiled, with a
  block mask), and the raw xformers / flash-attn variable-length kernels on pre-packed inputs
  (``xformers-varlen``, ``flash-attn-varlen``: packing not timed) when installed.
- guided_step: ``ops:<backend>`` against the eager composite (``eager``, the baseline: the
  pure-PyTorch reference, which is also the ``math`` backend) and ``diffusers`` (guidance done
  eagerly, then ``DDIMScheduler.step``).
- reward_head: ``ops:<backend>`` against the eager reference (baseline) and ``F.cosine_similarity``.

An implementation that cannot run here becomes a ``Skipped`` with its reason (a forward-only one
skips its backward passes with the reason). Passes: ``fwd`` (grad disabled: the sampling path),
``bwd`` (``autograd.grad`` of a retained graph), ``fwd+bwd``. Every case is checked against a float64
reference before it is timed (``max_abs_err``: forward output on valid positions). FLOPs and bytes
follow the minimal-I/O model written next to each case builder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from easytune import ops
from easytune.bench.ceilings import parse_dtype, throughput
from easytune.bench.results import add_speedups
from easytune.bench.timing import TimingStats, bench
from easytune.errors import ConfigError
from easytune.models.presets import MLD_SCHEDULER

PASSES = ("fwd", "bwd", "fwd+bwd")
OPS = ("attention", "guided_step", "reward_head")
BASELINE = {"attention": "sdpa-mask", "guided_step": "eager", "reward_head": "eager"}


@dataclass
class KernelCase:
    """One implementation of one op on fixed inputs.

    ``forward()`` returns the implementation's native output; ``max_abs_err`` its largest deviation
    from the float64 reference, whose largest magnitude is ``reference_max``; ``leaves`` are the
    differentiable inputs (empty with ``no_backward`` saying why); ``flops`` / ``bytes_moved`` map a
    pass to its cost (absent: not counted); ``cuda_graph``: GPU timing replays a CUDA graph
    (microsecond kernels).
    """

    op: str
    impl: str
    shape: str
    dtype: str
    device: str
    forward: Callable[[], torch.Tensor]
    leaves: list[torch.Tensor]
    max_abs_err: float
    reference_max: float
    flops: dict[str, float] = field(default_factory=dict)
    bytes_moved: dict[str, float] = field(default_factory=dict)
    cuda_graph: bool = False
    no_backward: str = ""

    @classmethod
    def checked(
        cls,
        op: str,
        impl: str,
        shape: str,
        dtype: str,
        device: str,
        forward: Callable[[], torch.Tensor],
        leaves: list[torch.Tensor],
        reference: torch.Tensor,
        error_mask: torch.Tensor | float = 1.0,
        to_reference_layout: Callable[[torch.Tensor], torch.Tensor] = lambda out: out,
        **costs: Any,
    ) -> KernelCase:
        """A case whose forward output, mapped by ``to_reference_layout`` (e.g. packed varlen -> padded),
        is first compared with the float64 ``reference`` on the entries where ``error_mask`` is nonzero;
        ``costs``: ``flops``, ``bytes_moved``, ``cuda_graph``, ``no_backward``."""
        with torch.no_grad():
            err = float(((to_reference_layout(forward()).double() - reference) * error_mask).abs().max())
        return cls(
            op,
            impl,
            shape,
            dtype,
            device,
            forward,
            leaves,
            err,
            float(reference.abs().max()),
            **costs,
        )

    @property
    def case(self) -> str:
        return case_id(self.op, self.shape, self.dtype, self.device, self.impl)

    def pass_fn(self, pass_: str) -> Callable[[], Any]:
        """A zero-argument callable running pass ``pass_`` once."""
        if pass_ not in PASSES:
            raise ConfigError(f"pass must be one of {PASSES}, got {pass_!r}")
        if pass_ == "fwd":

            def fwd() -> torch.Tensor:
                with torch.no_grad():
                    return self.forward()

            return fwd
        if not self.leaves:
            raise ConfigError(f"{self.case}: no backward ({self.no_backward or 'no differentiable inputs'})")
        out = self.forward()
        grad_out = torch.randn_like(out)
        if pass_ == "bwd":
            return lambda: torch.autograd.grad(out, self.leaves, grad_out, retain_graph=True)
        return lambda: torch.autograd.grad(self.forward(), self.leaves, grad_out)


@dataclass(frozen=True)
class Skipped:
    """An implementation that cannot run here, and why."""

    op: str
    impl: str
    shape: str
    reason: str


def case_id(op: str, shape: str, dtype: str, device: str | torch.device, impl: str) -> str:
    return f"{op}/{shape}/{dtype}/{torch.device(device).type}/{impl}"


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _ops_impls(
    op: str, device: torch.device, fwd_inputs: dict[str, Any], grad_inputs: dict[str, Any]
) -> list[tuple[str, list[str], list[str]]]:
    """(backend, forward reasons, backward reasons) of every backend registered for ``op``. Compiled
    backends are benchmarked on a GPU only (the Triton interpreter is a test tool, not a speed)."""
    fwd = ops.dispatch.report(op, **fwd_inputs)
    grad = ops.dispatch.report(op, **grad_inputs)
    out = []
    for backend, reasons in fwd.items():
        if backend in ("triton", "cuda") and device.type != "cuda":
            reasons = [*reasons, f"the {backend} backend is benchmarked on a GPU only (device is {device})"]
        out.append((backend, reasons, grad.get(backend, [])))
    return out


def _detached(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach() for t in tensors]


# ----------------------------------------------------------------------------------------------- attention


def parse_attention_shape(spec: str) -> tuple[int, int, int, int]:
    """``"B,H,T,D"`` -> (B, H, T, D), each >= 1."""
    try:
        dims = tuple(int(x) for x in spec.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise ConfigError(f"attention shape must be 'B,H,T,D' with positive integers, got {spec!r}")
    return dims  # type: ignore[return-value]


def attention_lengths(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    """Deterministic valid lengths [B] in [max(1, T // 5), T], the first one full (motion clips are
    40..196 frames in HumanML3D)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, seq // 5), seq + 1, (batch,), generator=g)
    lengths[0] = seq
    return lengths


def attention_cases(
    shape: tuple[int, int, int, int],
    device: str | torch.device,
    dtype: str,
    flex_on_cpu: bool = False,
    seed: int = 0,
) -> list[KernelCase | Skipped]:
    """Every attention implementation on self-attention inputs of ``shape`` = (B, H, T, D) with
    padding lengths from ``attention_lengths``. FLOPs count valid (query, key) pairs only:
    fwd 4 H D sum_b L_b^2, bwd 2.5x, both 3.5x. Bytes: fwd q, k, v, o; bwd q, k, v, o, dO, dQ, dK, dV."""
    device, tdtype = torch.device(device), parse_dtype(dtype)
    B, H, T, D = shape
    name = f"B{B}-H{H}-T{T}-D{D}"
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(B, H, T, D, generator=g, dtype=torch.float64).to(device) for _ in range(3)]
    lengths = attention_lengths(B, T, seed).to(device)
    valid = torch.arange(T, device=device)[None, :] < lengths[:, None]
    qmask = valid[:, None, :, None]
    reference = ops.attention_ref(*base, lengths, lengths)
    q, k, v = (x.to(tdtype).requires_grad_(True) for x in base)
    qd, kd, vd = _detached(q, k, v)
    fwd_flops = 4.0 * H * D * float((lengths.double() ** 2).sum())
    nbytes = B * H * T * D * _elem(tdtype)
    flops = {"fwd": fwd_flops, "bwd": 2.5 * fwd_flops, "fwd+bwd": 3.5 * fwd_flops}
    io = {"fwd": 4.0 * nbytes, "bwd": 8.0 * nbytes, "fwd+bwd": 12.0 * nbytes}

    def case(
        impl: str,
        fwd: Callable[[], torch.Tensor],
        leaves: list[torch.Tensor],
        to_padded: Callable[[torch.Tensor], torch.Tensor] = lambda o: o,
        no_backward: str = "",
    ) -> KernelCase:
        return KernelCase.checked(
            "attention",
            impl,
            name,
            dtype,
            str(device),
            fwd,
            leaves,
            reference,
            qmask,
            to_padded,
            flops=flops,
            bytes_moved=io,
            no_backward=no_backward,
        )

    out: list[KernelCase | Skipped] = []
    common = {"q_lengths": lengths, "kv_lengths": lengths, "dropout_p": 0.0}
    for backend, reasons, grad_reasons in _ops_impls(
        "attention", device, {"q": qd, "k": kd, "v": vd, **common}, {"q": q, "k": k, "v": v, **common}
    ):
        impl = f"ops:{backend}"
        if reasons:
            out.append(Skipped("attention", impl, name, "; ".join(reasons)))
        elif grad_reasons:
            out.append(
                case(
                    impl,
                    lambda b=backend: ops.attention(
                        qd, kd, vd, q_lengths=lengths, kv_lengths=lengths, backend=b
                    ),
                    [],
                    no_backward="; ".join(grad_reasons),
                )
            )
        else:
            out.append(
                case(
                    impl,
                    lambda b=backend: ops.attention(
                        q, k, v, q_lengths=lengths, kv_lengths=lengths, backend=b
                    ),
                    [q, k, v],
                )
            )

    mask = valid[:, None, None, :]  # every sample has >= 1 valid key, so no row is fully masked
    out.append(
        case("sdpa-mask", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask) * qmask, [q, k, v])
    )

    def sdpa_math() -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask) * qmask

    out.append(case("sdpa-math", sdpa_math, [q, k, v]))
    out.append(_flex_case(case, q, k, v, lengths, qmask, name, device, flex_on_cpu))
    out.extend(_varlen_cases(case, q, k, v, lengths, valid, name, device, tdtype))
    return out


def _flex_case(case, q, k, v, lengths, qmask, name, device, flex_on_cpu) -> KernelCase | Skipped:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as err:
        return Skipped("attention", "flex", name, f"torch.nn.attention.flex_attention unavailable ({err})")
    if device.type == "cpu" and not flex_on_cpu:
        return Skipped(
            "attention",
            "flex",
            name,
            "FlexAttention on CPU needs a torch.compile per shape (about a minute on 2 cores) and has no "
            "backward; `easytune bench kernels --flex-cpu` includes its forward",
        )
    B, _, T, _ = q.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx < lengths[b]) & (kv_idx < lengths[b])

    block_mask = create_block_mask(mask_mod, B, 1, T, T, device=str(device))
    compiled = torch.compile(flex_attention, dynamic=False)
    if device.type == "cpu":
        qd, kd, vd = _detached(q, k, v)
        return case(
            "flex",
            lambda: compiled(qd, kd, vd, block_mask=block_mask) * qmask,
            [],
            no_backward="FlexAttention has no backward on CPU",
        )
    return case("flex", lambda: compiled(q, k, v, block_mask=block_mask) * qmask, [q, k, v])


def _unpack_fn(valid: torch.Tensor, shape: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Packed [N, H, D] (or [1, N, H, D]) -> padded [B, H, T, D] with zeros on padded frames."""

    def unpack(packed: torch.Tensor) -> torch.Tensor:
        B, H, T, D = shape
        full = packed.new_zeros(B, T, H, D)
        full[valid] = packed.reshape(-1, H, D)
        return full.transpose(1, 2)

    return unpack


def _varlen_cases(case, q, k, v, lengths, valid, name, device, tdtype) -> list[KernelCase | Skipped]:
    out: list[KernelCase | Skipped] = []
    packed = [x.detach().transpose(1, 2)[valid].requires_grad_(True) for x in (q, k, v)]  # [N, H, D]
    unpack = _unpack_fn(valid, tuple(q.shape))
    seqlens = [int(x) for x in lengths.tolist()]
    try:
        import xformers.ops as xops
    except ImportError as err:
        out.append(Skipped("attention", "xformers-varlen", name, f"xformers is not installed ({err})"))
    else:
        if device.type != "cuda":
            out.append(Skipped("attention", "xformers-varlen", name, f"xformers needs CUDA, got {device}"))
        else:
            bias = xops.fmha.attn_bias.BlockDiagonalMask.from_seqlens(seqlens, seqlens)
            pq, pk, pv = (x[None] for x in packed)  # [1, N, H, D]
            out.append(
                case(
                    "xformers-varlen",
                    lambda: xops.memory_efficient_attention(pq, pk, pv, attn_bias=bias),
                    packed,
                    unpack,
                )
            )
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as err:
        out.append(Skipped("attention", "flash-attn-varlen", name, f"flash-attn is not installed ({err})"))
    else:
        if device.type != "cuda" or tdtype not in (torch.float16, torch.bfloat16):
            out.append(
                Skipped(
                    "attention",
                    "flash-attn-varlen",
                    name,
                    f"flash-attn needs CUDA and float16/bfloat16, got {device} {tdtype}",
                )
            )
        else:
            cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
            top = max(seqlens)
            out.append(
                case(
                    "flash-attn-varlen",
                    lambda: flash_attn_varlen_func(*packed, cu, cu, top, top),
                    packed,
                    unpack,
                )
            )
    return out


# --------------------------------------------------------------------------------------------- guided_step


def _mld_alphas_cumprod() -> torch.Tensor:
    """The MLD preset's cumulative alphas (float32 like diffusers', as float64)."""
    from easytune.diffusion import DDIMScheduler

    return DDIMScheduler(**MLD_SCHEDULER).alphas_cumprod.double()


def guided_step_cases(
    sample_shape: Sequence[int],
    device: str | torch.device,
    dtype: str,
    guidance_scale: float = 7.5,
    seed: int = 0,
) -> list[KernelCase | Skipped]:
    """The fused guidance + DDIM step (epsilon prediction, eta 0, the MLD DDIM schedule at its 11th
    of 50 steps) on ``sample_shape`` [B, ...]. Bytes: fwd reads cond, uncond, x_t and writes guided,
    x0_hat, x_prev (6 tensors); bwd reads 3 output grads, writes 3 input grads; no FLOPs counted."""
    device, tdtype = torch.device(device), parse_dtype(dtype)
    name = "x".join(str(s) for s in sample_shape)
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(*sample_shape, generator=g, dtype=torch.float64) for _ in range(3)]
    alphas_cumprod = _mld_alphas_cumprod()
    t, t_prev = 781, 761  # DDIM 50 steps, steps_offset 1: 981, 961, ..., 1
    B = sample_shape[0]
    a_t, a_prev = alphas_cumprod[t].repeat(B), alphas_cumprod[t_prev].repeat(B)
    reference = ops.guided_step_ref(*base, a_t, a_prev, guidance_scale)[2].to(device)
    cond, uncond, x = (b.to(device=device, dtype=tdtype).requires_grad_(True) for b in base)
    a_t, a_prev = a_t.to(device), a_prev.to(device)
    nbytes = cond.numel() * _elem(tdtype)
    io = {"fwd": 6.0 * nbytes, "bwd": 6.0 * nbytes, "fwd+bwd": 12.0 * nbytes}

    def case(
        impl: str,
        fwd: Callable[[], torch.Tensor],
        leaves: list[torch.Tensor],
        graph: bool = True,
        no_backward: str = "",
    ) -> KernelCase:
        return KernelCase.checked(
            "guided_step",
            impl,
            name,
            dtype,
            str(device),
            fwd,
            leaves,
            reference,
            bytes_moved=io,
            cuda_graph=graph,
            no_backward=no_backward,
        )

    def fused(backend: str, inputs: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: ops.guided_step(*inputs, a_t, a_prev, guidance_scale=guidance_scale, backend=backend)[
            2
        ]

    out: list[KernelCase | Skipped] = []
    common = {"eta": 0.0, "noise": None, "prediction_type": "epsilon"}
    cd, ud, xd = _detached(cond, uncond, x)
    for backend, reasons, grad_reasons in _ops_impls(
        "guided_step",
        device,
        {"model_cond": cd, "model_uncond": ud, "sample": xd, **common},
        {"model_cond": cond, "model_uncond": uncond, "sample": x, **common},
    ):
        if backend == "math":
            continue  # the math backend is the eager composite itself
        if reasons:
            out.append(Skipped("guided_step", f"ops:{backend}", name, "; ".join(reasons)))
        elif grad_reasons:
            out.append(
                case(f"ops:{backend}", fused(backend, [cd, ud, xd]), [], no_backward="; ".join(grad_reasons))
            )
        else:
            out.append(case(f"ops:{backend}", fused(backend, [cond, uncond, x]), [cond, uncond, x]))
    out.append(
        case(
            "eager",
            lambda: ops.guided_step_ref(cond, uncond, x, a_t, a_prev, guidance_scale)[2],
            [cond, uncond, x],
        )
    )
    try:
        from diffusers import DDIMScheduler
    except ImportError as err:
        out.append(Skipped("guided_step", "diffusers", name, f"diffusers is not installed ({err})"))
        return out
    sched = DDIMScheduler(**MLD_SCHEDULER)
    sched.set_timesteps(50)
    if int(sched.timesteps[10]) != t:
        raise ConfigError(f"diffusers DDIM timesteps changed: step 10 is {int(sched.timesteps[10])}, not {t}")

    def diffusers_step() -> torch.Tensor:
        guided = uncond + guidance_scale * (cond - uncond)
        return sched.step(guided, t, x, eta=0.0).prev_sample

    out.append(case("diffusers", diffusers_step, [cond, uncond, x], graph=False))  # host-side indexing
    return out


# --------------------------------------------------------------------------------------------- reward_head


def reward_head_cases(
    latent_shape: Sequence[int], device: str | torch.device, dtype: str, seed: int = 0
) -> list[KernelCase | Skipped]:
    """Cosine of motion and text latents [B, D]. Bytes: fwd reads both latents, writes [B]; bwd reads
    them and the [B] grad, writes two latent grads. FLOPs: fwd 6 B D (three dot products), bwd 2x."""
    device, tdtype = torch.device(device), parse_dtype(dtype)
    B, D = latent_shape
    name = f"B{B}-D{D}"
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(B, D, generator=g, dtype=torch.float64) for _ in range(2)]
    reference = ops.reward_head_ref(*base).to(device)
    m, t = (b.to(device=device, dtype=tdtype).requires_grad_(True) for b in base)
    md, td = _detached(m, t)
    e = _elem(tdtype)
    io = {"fwd": (2.0 * B * D + B) * e, "bwd": (4.0 * B * D + B) * e, "fwd+bwd": (6.0 * B * D + 2 * B) * e}
    fl = {"fwd": 6.0 * B * D, "bwd": 12.0 * B * D, "fwd+bwd": 18.0 * B * D}

    def case(
        impl: str, fwd: Callable[[], torch.Tensor], leaves: list[torch.Tensor], no_backward: str = ""
    ) -> KernelCase:
        return KernelCase.checked(
            "reward_head",
            impl,
            name,
            dtype,
            str(device),
            fwd,
            leaves,
            reference,
            flops=fl,
            bytes_moved=io,
            cuda_graph=True,
            no_backward=no_backward,
        )

    out: list[KernelCase | Skipped] = []
    for backend, reasons, grad_reasons in _ops_impls(
        "reward_head", device, {"motion": md, "text": td}, {"motion": m, "text": t}
    ):
        if backend == "math":
            continue  # identical to the eager reference
        if reasons:
            out.append(Skipped("reward_head", f"ops:{backend}", name, "; ".join(reasons)))
        elif grad_reasons:
            out.append(
                case(
                    f"ops:{backend}",
                    lambda b=backend: ops.reward_head(md, td, backend=b),
                    [],
                    no_backward="; ".join(grad_reasons),
                )
            )
        else:
            out.append(case(f"ops:{backend}", lambda b=backend: ops.reward_head(m, t, backend=b), [m, t]))
    out.append(case("eager", lambda: ops.reward_head_ref(m, t), [m, t]))
    out.append(case("torch-cosine", lambda: F.cosine_similarity(m, t, dim=-1), [m, t]))
    return out


# ------------------------------------------------------------------------------------------------- running


def time_case(case: KernelCase, pass_: str, **timer_kwargs: Any) -> TimingStats:
    """Time one pass: CUDA-graph replay where the case allows it (falling back to CUDA events when
    capture fails), CUDA events otherwise, perf_counter on CPU. ``bwd`` is never graph-captured: its
    forward ran outside the capture stream, so autograd would launch the backward on another stream."""
    fn = case.pass_fn(pass_)
    device = torch.device(case.device)
    if device.type == "cuda" and case.cuda_graph and pass_ != "bwd":
        try:
            return bench(fn, device, cuda_graph=True)
        except RuntimeError:
            torch.cuda.synchronize(device)
    return bench(fn, device, **timer_kwargs)


def kernel_row(
    case: KernelCase | Skipped,
    pass_: str,
    stats: TimingStats | None,
    ceilings: dict[str, Any] | None,
    device: str | torch.device,
    dtype: str,
) -> dict[str, Any]:
    """The result row of one (case, pass); speed-ups are filled in by ``results.add_speedups``."""
    row: dict[str, Any] = {
        "kind": "kernel",
        "case": f"{case_id(case.op, case.shape, dtype, device, case.impl)}/{pass_}",
        "op": case.op,
        "impl": case.impl,
        "shape": case.shape,
        "dtype": dtype,
        "pass": pass_,
        "device": str(device),
        "baseline_impl": BASELINE[case.op],
    }
    if isinstance(case, Skipped):
        return {**row, "status": "skipped", "reason": case.reason}
    if pass_ != "fwd" and not case.leaves:
        return {**row, "status": "skipped", "reason": case.no_backward}
    row["max_abs_err"] = case.max_abs_err
    row["max_rel_err"] = case.max_abs_err / case.reference_max if case.reference_max else None
    if stats is not None:
        row.update(stats.as_dict(), timer=stats.method)
        row.update(
            throughput(
                stats.median_s,
                flops=case.flops.get(pass_),
                bytes_moved=case.bytes_moved.get(pass_),
                ceilings=ceilings,
                dtype=case.dtype,
            )
        )
    return row


def default_shapes(device: str | torch.device, batch: int | None = None) -> dict[str, list[tuple[int, ...]]]:
    """Paper-like shapes on a GPU (batch 64; MLD latent [1, 256]; MDM frames [196, 263]; 4 heads of 64
    over 196 frames; reward latents 256-d), small ones on CPU (batch 4); ``batch`` overrides B."""
    gpu = torch.device(device).type == "cuda"
    b = batch or (64 if gpu else 4)
    if gpu:
        return {
            "attention": [(b, 4, 196, 64)],
            "guided_step": [(b, 1, 256), (b, 196, 263)],
            "reward_head": [(b, 256), (8192, 256)],
        }
    return {
        "attention": [(b, 4, 64, 32)],
        "guided_step": [(b, 1, 256), (b, 196, 263)],
        "reward_head": [(b, 256), (1024, 256)],
    }


def build_cases(
    op: str, shape: tuple[int, ...], device: str | torch.device, dtype: str, flex_on_cpu: bool = False
) -> list[KernelCase | Skipped]:
    """The cases of ``op`` on one shape (see the builders above)."""
    if op == "attention":
        return attention_cases(shape, device, dtype, flex_on_cpu)  # type: ignore[arg-type]
    if op == "guided_step":
        return guided_step_cases(shape, device, dtype)
    if op == "reward_head":
        return reward_head_cases(shape, device, dtype)
    raise ConfigError(f"op must be one of {OPS}, got {op!r}")


def run_kernels(
    device: str | torch.device,
    dtype: str,
    ops_: Sequence[str] = OPS,
    passes: Sequence[str] = PASSES,
    shapes: dict[str, list[tuple[int, ...]]] | None = None,
    ceilings: dict[str, Any] | None = None,
    flex_on_cpu: bool = False,
    show_progress: bool = False,
    **timer_kwargs: Any,
) -> list[dict[str, Any]]:
    """Build, check and time every case of ``ops_`` x ``passes``; one row per (case, pass) (a progress bar
    over the (op, shape) pairs with ``show_progress``)."""
    for name, given, allowed in (("pass", passes, PASSES), ("op", ops_, OPS)):
        bad = [x for x in given if x not in allowed]
        if bad:
            raise ConfigError(f"{name} must be among {allowed}, got {bad}")
    shapes = {**default_shapes(device), **(shapes or {})}
    from easytune.progress import progress

    rows: list[dict[str, Any]] = []
    pairs = [(op, shape) for op in ops_ for shape in shapes[op]]
    bar = progress(pairs, total=len(pairs), desc="bench kernels", unit="shape", enabled=show_progress)
    for op, shape in bar:
        for case in build_cases(op, shape, device, dtype, flex_on_cpu):
            for p in passes:
                runnable = isinstance(case, KernelCase) and (p == "fwd" or case.leaves)
                stats = time_case(case, p, **timer_kwargs) if runnable else None
                rows.append(kernel_row(case, p, stats, ceilings, device, dtype))
    add_speedups(rows)
    return rows
