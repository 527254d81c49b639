"""What the manager sends a worker (Orders) and what a worker answers (Report).

One exchange per chunk of decoding: the worker applies the orders (exports, imports, admissions),
decodes up to `max_steps` steps (returning early when a slot frees and the manager has work
waiting), and reports progress. Live Ray workers and simulated workers speak the same messages, so
the manager and the policies cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rollout_len.sample import Sample

__all__ = ["Admission", "Orders", "Progress", "Report"]


@dataclass
class Admission:
    """A sample to start (fresh) or to continue (migrated or resumed: it carries its tokens)."""

    sample: Sample
    prompt_feature: torch.Tensor | None = None  # (d,) EGTP feature of its prompt, for PLP
    plp_state: dict | None = None  # pooling state exported with a migrating sample


@dataclass
class Orders:
    admit: list[Admission] = field(default_factory=list)
    export: list[str] = field(default_factory=list)  # migrate out (before decoding)
    score: list[tuple[str, list[int], int]] = field(default_factory=list)  # (group id, prompt ids, max_new_tokens)
    max_steps: int = 16  # k: decode steps per chunk (PLP predicts once per chunk)
    return_on_free_slot: bool = False  # the manager has samples waiting for a slot here
    head_state: dict | None = None  # new predictor weights
    static_batches: bool = False  # padded static batches (no admission until the batch ends)


@dataclass
class Progress:
    """A running sample's tokens since the last report; enough to resume it if the worker dies."""

    new_tokens: list[int]
    new_logprobs: list[float]
    rng_state: torch.Tensor | None
    predicted_remaining: float | None = None  # PLP mean, when predicted this chunk
    predicted_q90: float | None = None


@dataclass
class Report:
    worker_id: int
    steps: int = 0
    busy_s: float = 0.0  # compute time of this chunk (decode + prefill + PLP)
    plp_s: float = 0.0  # of which the predictor
    batch_sizes: list[int] = field(default_factory=list)  # per decode step
    padded_tokens: int = 0
    decode_tokens: int = 0
    progress: dict[str, Progress] = field(default_factory=dict)
    finished: list[Sample] = field(default_factory=list)
    exported: list[Admission] = field(default_factory=list)
    scores: dict[str, tuple[torch.Tensor, float | None]] = field(default_factory=dict)  # group -> (feature, t=0 prediction)
    training: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # PLP (features, remaining) of finished samples
