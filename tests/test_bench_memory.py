"""easytune.bench.memory: exact saved-for-backward bytes, live tensor bytes, peak RSS."""

import numpy as np
import torch

from easytune.bench.memory import LiveTensorMeter, PeakMemory, SavedTensorsMeter, tensor_bytes


def test_saved_bytes_of_a_known_graph():
    # mm(x, w) saves x and w (both need grad), tanh saves its output z, z * z saves z twice (one storage).
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(8, 16, dtype=torch.float64))
    with SavedTensorsMeter(exclude=[w]) as meter:
        z = torch.tanh(x @ w)
        loss = (z * z).sum()
    assert meter.saved_tensors == 5  # x, w (mm) + z (tanh) + z, z (mul)
    assert meter.peak_bytes == x.numel() * 8 + z.numel() * 8  # w excluded, z counted once
    assert meter.live_bytes == meter.peak_bytes
    loss.backward()
    assert meter.live_bytes == 0  # the graph was freed by backward
    torch.testing.assert_close(x.grad, (2 * z * (1 - z**2)) @ w.detach().T)


def test_saved_bytes_count_the_whole_storage_of_a_view_and_peak_is_not_a_sum():
    base = torch.randn(100, requires_grad=True)
    meter = SavedTensorsMeter()
    with meter:
        for _ in range(3):  # three graphs, each freed before the next: peak = one graph
            view = base[:10] * 1.0  # a fresh [10] tensor; exp saves its output
            out = view.exp()
            out.sum().backward()
        assert meter.peak_bytes == 10 * 4 and meter.live_bytes == 0
        kept = [base.sin() for _ in range(3)]  # sin saves its input `base` (a leaf: counted once)
        assert meter.live_bytes == 100 * 4
        big = torch.randn(50, requires_grad=True)
        held = big.view(5, 10)[1:3].cos()  # saves a view of `big`: the whole storage (50 floats) counts
        assert meter.live_bytes == 100 * 4 + 50 * 4
        assert meter.total_bytes == 10 * 4 * 3 + 100 * 4 + 50 * 4
    del kept, held
    assert meter.live_bytes == 0


def test_live_tensor_meter_counts_new_storages_only():
    pre = torch.zeros(1000)
    with LiveTensorMeter() as meter:
        a = torch.ones(1000)  # 4000 bytes
        a.add_(1)  # in place: nothing new
        v = a.view(10, 100)  # view: nothing new
        pre.mul_(2)  # in place on a tensor from before the block: nothing new
        b = pre + 1  # new: 4000 bytes
        assert meter.live_bytes == 8000
        del a, v
        assert meter.live_bytes == 4000
        c = torch.empty(3000, dtype=torch.float64)  # 24000 bytes
    assert meter.peak_bytes == 4000 + 24000
    del b, c
    assert meter.live_bytes == 0


def test_tensor_bytes_dedupes_storages():
    p = torch.randn(10, 10)
    assert tensor_bytes([p, p.T, p[0], torch.zeros(5, dtype=torch.int8)]) == 400 + 5


def test_peak_memory_on_cpu_sees_a_large_allocation():
    with PeakMemory("cpu") as peak:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB touched
        del block
    assert peak.method
    assert peak.peak_bytes - peak.start_bytes >= 48 * 2**20
