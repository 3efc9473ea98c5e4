"""The library side of ``easytune bench`` and the ``bench/`` pytest-benchmark suites.

Modules (each imported on use; none touches a device or an optional dependency at import time):
``env`` (environment record), ``nvml`` (GPU telemetry sampler), ``memory`` (saved-for-backward bytes,
live tensor bytes, device peaks), ``timing`` (CPU / CUDA-event / CUDA-graph timers), ``ceilings``
(measured copy and matmul ceilings), ``isolate`` (one case per fresh process), ``methods`` and
``reward_time`` (fine-tuning method cases), ``kernels`` (op cases), ``results`` / ``report`` /
``compare`` (result files, markdown + plots, regression checks). See docs/bench.md.
"""
