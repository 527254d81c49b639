"""The live rollout: Ray (or in-process) workers that execute the scheduler's orders.

    coordinator   Coordinator, RolloutConfig, StepResult, PartialStepResult: one rollout step (synchronous
                  or partial) over the workers
    worker        RolloutWorker: a DecodeEngine + PLP tracker executing Orders

Deciding lives in rollout_len.sched; this package only executes.
"""

from rollout_len.rollout.coordinator import Coordinator, PartialStepResult, RolloutConfig, StepFailed, StepResult

__all__ = ["Coordinator", "PartialStepResult", "RolloutConfig", "StepFailed", "StepResult"]
