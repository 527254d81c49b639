"""Hot-path ops of rollout_len, each with a pure-torch reference beside its Triton kernel (installed as
`rollout_len.kernels`). Triton is imported lazily on the first triton launch, so CPU-only machines import
this package without it; every op takes impl="auto" (triton on CUDA tensors, torch otherwise), except
`logits_entropy`, one torch expression over logits already computed (the definition `linear_entropy`
fuses)."""

from rollout_len.kernels.egtp import egtp_pool
from rollout_len.kernels.entropy import linear_entropy, logits_entropy
from rollout_len.kernels.online_pool import OnlinePoolState, online_pool_update

__all__ = ["linear_entropy", "logits_entropy", "egtp_pool", "online_pool_update", "OnlinePoolState"]
