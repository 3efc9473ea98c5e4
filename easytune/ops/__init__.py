"""The public face of the kernels: ``attention``, ``guided_step``, ``reward_head``.

Each op has a pure-PyTorch reference (``*_ref``, the ``math`` backend) and faster backends chosen
by ``easytune.ops.dispatch`` (docs/kernels.md). Importing this package imports neither Triton, the
CUDA library, xformers nor flash-attn.
"""

from easytune.ops import attention_varlen as attention_varlen  # xformers / flash backends: registers only
from easytune.ops import cuda as cuda  # the cuda backend (csrc/): registers, loads nothing
from easytune.ops import dispatch
from easytune.ops.attention import attention, attention_ref, length_mask
from easytune.ops.guided_step import (
    FLOW_PREDICTION_TYPES,
    PREDICTION_TYPES,
    guided_step,
    guided_step_ref,
    to_x0_eps,
)
from easytune.ops.reward_head import reward_head, reward_head_ref

__all__ = [
    "FLOW_PREDICTION_TYPES",
    "PREDICTION_TYPES",
    "attention",
    "attention_ref",
    "dispatch",
    "guided_step",
    "guided_step_ref",
    "length_mask",
    "reward_head",
    "reward_head_ref",
    "to_x0_eps",
]
