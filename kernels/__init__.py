"""Hot-path ops of rollout_len, each with a pure-torch reference (installed as `rollout_len.kernels`)."""

from rollout_len.kernels.entropy import linear_entropy

__all__ = ["linear_entropy"]
