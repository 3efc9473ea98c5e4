"""Backend selection: environment variables, explicit choices that cannot run (with their reasons),
``auto`` fallback and its log, ``auto`` never picking the Triton interpreter, and the packing used by
the xformers / flash backends (checked with a per-sample reference in place of the libraries)."""

from __future__ import annotations

import logging

import pytest
import torch

from easytune import ops
from easytune.errors import BackendUnavailableError, ConfigError
from easytune.ops import _triton, dispatch
from easytune.ops.attention_varlen import packed_attention, varlen_layout


def _qkv(dtype=torch.float32, D=16, B=2, T=5):
    return {name: torch.randn(B, 2, T, D, dtype=dtype) for name in ("q", "k", "v")}


def test_env_variables_choose_the_backend(monkeypatch):
    inputs = _qkv()
    monkeypatch.setenv("EASYTUNE_BACKEND", "math")
    dispatch.clear_cache()  # environment variables are read when the cache fills
    assert dispatch.resolve("attention", **inputs).backend == "math"
    monkeypatch.setenv("EASYTUNE_ATTENTION_BACKEND", "sdpa")  # the op's variable wins over the global one
    assert dispatch.resolve("attention", **inputs).backend == "math"  # not re-read: the cached choice
    dispatch.clear_cache()
    assert dispatch.resolve("attention", **inputs).backend == "sdpa"
    assert dispatch.resolve("attention", "math", **inputs).backend == "math"  # the argument wins
    monkeypatch.setenv("EASYTUNE_ATTENTION_BACKEND", "fast")
    dispatch.clear_cache()
    with pytest.raises(ConfigError, match="EASYTUNE_ATTENTION_BACKEND.*'fast'"):
        dispatch.resolve("attention", **inputs)


def test_unknown_backend_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="backend="):
        ops.attention(*_qkv().values(), backend="cudnn")


@pytest.mark.parametrize(
    "backend,kwargs,reason",
    [
        ("triton", dict(D=48), "head dim 48"),
        ("triton", dict(dtype=torch.float64), "float64 is not supported"),
        ("xformers", {}, "xformers is not installed"),
        ("flash", {}, "flash needs CUDA tensors"),
    ],
)
def test_explicit_backend_raises_with_its_reason(backend, kwargs, reason):
    with pytest.raises(BackendUnavailableError, match=reason):
        ops.attention(*_qkv(**kwargs).values(), backend=backend)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(_triton, "interpreting", lambda: False)
    reasons = dispatch.report("attention", **_qkv())["triton"]
    assert any("need CUDA tensors" in r and "TRITON_INTERPRET=1" in r for r in reasons)


@pytest.mark.triton
def test_auto_never_picks_the_triton_interpreter():
    assert _triton.interpreting()  # conftest runs the tests under TRITON_INTERPRET=1
    inputs = _qkv()
    assert dispatch.report("attention", **inputs)["triton"] == []  # an explicit choice runs it ...
    assert "TRITON_INTERPRET=1" in dispatch.report("attention", auto=True, **inputs)["triton"][0]  # auto not
    assert dispatch.resolve("attention", **inputs).backend == "sdpa"
    m = torch.randn(3, 8)
    assert dispatch.resolve("reward_head", motion=m, text=m).backend == "math"
    x = torch.randn(3, 4)
    a = torch.rand(3)
    assert (
        dispatch.resolve(
            "guided_step", model_cond=x, model_uncond=x, sample=x, alpha_prod_t=a, alpha_prod_t_prev=a
        ).backend
        == "math"
    )


def test_auto_logs_why_it_skips_a_backend_once(caplog, monkeypatch):
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    inputs = _qkv(dtype=torch.float64)
    with caplog.at_level(logging.DEBUG, logger="easytune.ops"):
        for _ in range(3):
            assert dispatch.resolve("attention", **inputs).backend == "sdpa"
    triton_lines = [r.getMessage() for r in caplog.records if "skips backend triton" in r.getMessage()]
    assert len(triton_lines) == 1 and "float64 is not supported" in triton_lines[0]


def test_auto_with_dropout_runs():
    q, k, v = _qkv().values()
    out = ops.attention(q, k, v, kv_lengths=torch.tensor([5, 2]), dropout_p=0.5)
    assert out.shape == q.shape and torch.isfinite(out).all()


def test_guided_step_triton_refuses_alphas_that_need_grad():
    x = torch.randn(2, 3)
    a = torch.rand(2, requires_grad=True)
    with pytest.raises(BackendUnavailableError, match="alpha_prod_t requires grad"):
        ops.guided_step(x, x, x, a, a.detach(), backend="triton")


def test_guided_step_rejects_bad_arguments():
    x = torch.randn(2, 3)
    a = torch.rand(2)
    with pytest.raises(ConfigError, match="noise"):
        ops.guided_step(x, x, x, a, a, eta=0.5)
    with pytest.raises(ConfigError, match="model_uncond must have the shape"):
        ops.guided_step(x, x[:, :2], x, a, a)
    with pytest.raises(ConfigError, match=r"alpha_prod_t_prev must be a scalar or have shape \[2\]"):
        ops.guided_step(x, x, x, a, torch.rand(3))
    with pytest.raises(ConfigError, match="prediction_type"):
        ops.guided_step(x, x, x, a, a, prediction_type="x0")


def _per_sample_varlen(qp, kp, vp, layout):
    """What flash_attn_varlen_func / a BlockDiagonalMask compute, sample by sample, in PyTorch."""
    outs, q0, k0 = [], 0, 0
    for nq, nk in zip(layout.q_seqlens, layout.kv_seqlens):
        q, k, v = (t.transpose(0, 1)[None] for t in (qp[q0 : q0 + nq], kp[k0 : k0 + nk], vp[k0 : k0 + nk]))
        outs.append(ops.attention_ref(q, k, v)[0].transpose(0, 1))
        q0, k0 = q0 + nq, k0 + nk
    return torch.cat(outs)


@pytest.mark.parametrize(
    "q_lengths,kv_lengths", [([7, 3, 0, 5], [9, 1, 4, 0]), (None, [9, 2, 9, 5]), (None, None)]
)
def test_packed_attention_matches_padded_reference(q_lengths, kv_lengths):
    B, H, Tq, Tk, D = 4, 2, 7, 9, 8
    q = torch.randn(B, H, Tq, D, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(B, H, Tk, D, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ql = None if q_lengths is None else torch.tensor(q_lengths)
    kl = None if kv_lengths is None else torch.tensor(kv_lengths)
    got = packed_attention(q, k, v, ql, kl, _per_sample_varlen)
    want = ops.attention_ref(q, k, v, ql, kl)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)):
        torch.testing.assert_close(a, b)


def test_varlen_layout_drops_samples_without_work():
    layout = varlen_layout(torch.tensor([3, 0, 2]), torch.tensor([4, 4, 0]), 3, 3, 4, torch.device("cpu"))
    assert layout.q_seqlens == [3] and layout.kv_seqlens == [4]
    assert layout.q_valid.sum() == 3 and layout.kv_valid.sum() == 4
    cu_q, cu_k = layout.cu_seqlens(torch.device("cpu"))
    assert cu_q.tolist() == [0, 3] and cu_k.tolist() == [0, 4] and cu_q.dtype == torch.int32


def test_lengths_range_is_checked_again_after_an_in_place_change():
    q, k, v = _qkv().values()
    lengths = torch.tensor([5, 2])
    ops.attention(q, k, v, kv_lengths=lengths, backend="math")
    lengths[1] = 6
    with pytest.raises(ConfigError, match=r"kv_lengths must lie in \[0, 5\], got \[5, 6\]"):
        ops.attention(q, k, v, kv_lengths=lengths, backend="math")
    full = torch.tensor([5, 5])
    ops.attention(q, k, v, q_lengths=full, backend="math")
    with pytest.raises(ConfigError, match=r"q_lengths must lie in \[0, 4\]"):  # checked against the new T
        ops.attention(q[:, :, :4], k, v, q_lengths=full, backend="math")


def test_resolution_is_memoised_per_signature(monkeypatch):
    calls = []

    def reasons(**inputs):
        calls.append(inputs["x"].shape)
        return []

    dispatch.register("probe_op", "math", lambda x: x, reasons)
    x = torch.randn(2, 3)
    for _ in range(5):
        assert dispatch.resolve("probe_op", x=x).backend == "math"
    assert len(calls) == 1  # the reasons ran once for the signature
    dispatch.resolve("probe_op", x=torch.randn(2, 4))  # another shape: another signature
    dispatch.resolve("probe_op", x=torch.randn(2, 3, requires_grad=True))  # requires_grad differs
    dispatch.resolve("probe_op", x=torch.randn(2, 3, dtype=torch.float64))  # dtype differs
    assert len(calls) == 4
    validated = []
    for _ in range(3):
        dispatch.resolve("probe_op", None, lambda **kw: validated.append(1), x=torch.randn(5))
    assert validated == [1]  # validation: once per signature too
    counts = dispatch.call_counts(reset=True)
    assert counts["probe_op"]["math"] == 11
    assert dispatch.call_counts() == {}


def test_declared_capabilities_are_checked_by_one_function():
    caps = dispatch.Capabilities(
        devices=("cuda",), dtypes=(torch.float16,), head_dims=(64,), grad=False, dropout=False
    )
    q = torch.randn(1, 1, 4, 48, requires_grad=True)
    text = " | ".join(
        dispatch.capability_reasons("attention", "mine", caps, {"q": q, "k": q, "v": q, "dropout_p": 0.1})
    )
    for expected in (
        "mine needs CUDA tensors (q on cpu",
        "dtype float32 is not supported (float16)",
        "head dim 48 is not supported",
        "q, k, v require grad",
        "dropout_p=0.1",
    ):
        assert expected in text, (expected, text)
    with torch.no_grad():  # forward-only kernels are fine without grad mode
        assert "require grad" not in " ".join(
            dispatch.capability_reasons("attention", "mine", caps, {"q": q})
        )
    assert (
        dispatch.capability_reasons("attention", "any", dispatch.Capabilities(), {"q": q, "k": q, "v": q})
        == []
    )
    mixed = {"q": torch.randn(1, 1, 4, 64, dtype=torch.float16), "k": torch.randn(1, 1, 4, 64), "v": q}
    assert any("mix dtypes" in r for r in dispatch.capability_reasons("attention", "mine", caps, mixed))


def test_the_entry_points_keys_hold_every_input_their_validation_reads():
    """Each op builds its own memo key inline (``dispatch.hits``): a call that differs from a cached
    valid one in any input that validation reads must be validated again, not served from the cache."""
    x, a = torch.randn(2, 3), torch.rand(2)
    q = torch.randn(2, 2, 5, 16)
    valid_and_bad = [
        (
            lambda: ops.guided_step(x, x, x, a, a),
            [
                (lambda: ops.guided_step(x, x, x, a, a, eta=0.5), "noise"),
                (lambda: ops.guided_step(x, x[:, :2], x, a, a), "model_uncond must have the shape"),
                (lambda: ops.guided_step(x, x, x, a, torch.rand(3)), "alpha_prod_t_prev must be a scalar"),
                (lambda: ops.guided_step(x, x, x, torch.rand(3), a), "alpha_prod_t must be a scalar"),
                (lambda: ops.guided_step(x, x, x, a, a, prediction_type="x0"), "prediction_type"),
                (lambda: ops.guided_step(x, x, x, a, a, eta=-1.0), "eta must be >= 0"),
                (lambda: ops.guided_step(x, x, x, a, a, eta=0.5, noise=x[:1]), "noise must have the shape"),
            ],
        ),
        (
            lambda: ops.attention(q, q, q),
            [
                (lambda: ops.attention(q, q[:, :1], q[:, :1]), "incompatible shapes"),
                (lambda: ops.attention(q, q, q.double()), "must share dtype"),
                (lambda: ops.attention(q, q, q, dropout_p=1.5), "dropout_p must lie in"),
                (
                    lambda: ops.attention(q, q, q, kv_lengths=torch.tensor([1.0, 2.0])),
                    "kv_lengths must be an",
                ),
                (lambda: ops.attention(q, q, q, q_lengths=torch.tensor([1, 2, 3])), "q_lengths must be an"),
            ],
        ),
        (lambda: ops.reward_head(x, x), [(lambda: ops.reward_head(x, x[:, :2]), "equal shape")]),
    ]
    for valid, bads in valid_and_bad:
        for _ in range(2):
            valid()  # cached after the first call
        for bad, message in bads:
            with pytest.raises(ConfigError, match=message):
                bad()
    memo = dispatch.hits("reward_head")
    assert [key[0] for key in memo] == [None]  # the valid call, memoised once; the refused one not at all
    assert next(iter(memo.values())).calls == 2  # both valid calls counted, under the one key
    ops.reward_head(x, x, backend="math")  # the backend argument is part of the key
    assert sorted(key[0] or "" for key in memo) == ["", "math"]


def test_guided_step_tensors_on_another_device_are_refused_on_a_memo_hit(monkeypatch):
    """The memo key holds only ``sample``'s device: a memoised call with a model output elsewhere is refused
    by the backend (the kernels' ``check_devices``; torch itself on the math backend)."""
    x, a = torch.randn(2, 3), torch.rand(2)
    other = torch.randn(2, 3, device="meta")
    ops.guided_step(x, x, x, a, a, guidance_scale=2.0)
    with pytest.raises((RuntimeError, NotImplementedError)):
        ops.guided_step(other, x, x, a, a, guidance_scale=2.0)  # math: torch refuses the mix
    monkeypatch.setattr(_triton, "interpreting", lambda: True)
    ops.guided_step(x, x, x, a, a, guidance_scale=2.0, backend="triton")
    with pytest.raises(ConfigError, match="model_uncond is on meta and sample on cpu"):
        ops.guided_step(x, other, x, a, a, guidance_scale=2.0, backend="triton")
    with pytest.raises(
        ConfigError, match="model_cond is on meta"
    ):  # the cuda backend checks before its library
        ops.cuda._guided_step_cuda(other, x, x, a, a, 2.0)


def test_guided_step_choice_ignores_what_its_memo_key_omits(monkeypatch):
    """``guided_step``'s memo key leaves out grad mode and the data tensors' requires_grad: valid only while
    every backend is differentiable and no reason reads them (a forward-only backend must put them back)."""
    monkeypatch.setattr(_triton, "interpreting", lambda: True)  # the Triton backend's reasons in play
    assert all(impl.capabilities.grad for impl in dispatch._REGISTRY["guided_step"])
    x, a = torch.randn(2, 3, 4), torch.rand(2)

    def report(requires_grad):
        t = x.clone().requires_grad_(requires_grad)
        inputs = dict(model_cond=t, model_uncond=t, sample=t, eta=0.0, noise=None, prediction_type="epsilon")
        return dispatch.report("guided_step", auto=True, **inputs, alpha_prod_t=a, alpha_prod_t_prev=a)

    base = report(False)
    assert report(True) == base
    with torch.no_grad():
        assert report(True) == base
    t = x.clone().requires_grad_(True)
    ops.guided_step(x, x, x, a, a, guidance_scale=2.0)  # memoised without grad ...
    ops.guided_step(t, x, x, a, a, guidance_scale=2.0)[
        2
    ].sum().backward()  # ... same key, still differentiable
    assert t.grad is not None and torch.isfinite(t.grad).all()


def test_compiling_is_true_only_in_traced_code_and_is_not_guarded_on():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()

    @torch.compile(backend=counter, fullgraph=True)
    def f(x):
        return x + 1 if dispatch.compiling() else x - 1

    assert not dispatch.compiling()
    assert [f(torch.zeros(2)).tolist() for _ in range(3)] == [[1.0, 1.0]] * 3
    assert counter.frame_count == 1  # a guard on the flag would recompile at every call
    torch._dynamo.reset()


def test_compiled_ops_trace_once_and_count_their_backend():
    """The dispatch bookkeeping must not be guarded on by Dynamo: a compiled function calling the ops is
    compiled once, however often it runs (a counter read in the graph recompiled it at every call)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    q = torch.randn(2, 2, 5, 16)
    x, a = torch.randn(2, 3), torch.rand(2)

    @torch.compile(backend=counter, fullgraph=True)
    def f(q, x):
        out = ops.attention(q, q, q)
        return out.sum() + ops.guided_step(x, x, x, a, a, guidance_scale=2.0)[2].sum() + ops.reward_head(x, x)

    dispatch.call_counts(reset=True)
    results = [f(q, x) for _ in range(4)]
    assert counter.frame_count == 1
    assert all(torch.equal(r, results[0]) for r in results)
    counts = dispatch.call_counts()
    assert set(counts) == {"attention", "guided_step", "reward_head"}
    torch._dynamo.reset()
