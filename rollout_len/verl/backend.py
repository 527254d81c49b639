"""The `length_aware` rollout backend for verl: what `actor_rollout_ref.rollout.name=length_aware` selects.

verl resolves a rollout backend by name in two registries, filled in every verl process by the
`verl.plugins` entry point (`rollout_len.verl.plugin`, which imports this module):

- `verl.workers.rollout.base._ROLLOUT_REGISTRY`: the object each hybrid actor worker keeps as
  `self.rollout`. verl's weight sync (`ActorRolloutRefWorker.update_weights`, backend "naive")
  feeds it the trainer's weights after every actor update. `WeightReceiver` forwards them to the
  Coordinator that LengthAwareRollout started (weights sent before it started are held by a
  `PendingWeights` actor until `create` loads them: verl's v1 trainer syncs once in its `init()`).
- `verl.workers.rollout.replica.RolloutReplicaRegistry`: the server replicas verl would launch
  (vLLM, SGLang). Generation runs in the Coordinator instead, so `LengthAwareReplica` launches
  nothing, and no vLLM server takes GPU memory.
"""

from __future__ import annotations

from collections.abc import Iterable

import ray
import torch
from verl.workers.rollout import base as verl_rollout_base
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, RolloutReplicaRegistry

__all__ = [
    "ROLLOUT_NAME",
    "COORDINATOR_ACTOR_NAME",
    "PENDING_WEIGHTS_ACTOR_NAME",
    "PendingWeights",
    "WeightReceiver",
    "take_pending_weights",
    "LengthAwareReplica",
    "register",
    "is_registered",
]

ROLLOUT_NAME = "length_aware"
COORDINATOR_ACTOR_NAME = "rollout_len_coordinator"  # the Ray actor LengthAwareRollout.create starts
PENDING_WEIGHTS_ACTOR_NAME = "rollout_len_pending_weights"  # weights sent before that Coordinator started
MANAGER_CLASS = "rollout_len.verl.LengthAwareRollout"


def coordinator_actor():
    """The running Coordinator actor, or None when none has started."""
    try:
        return ray.get_actor(COORDINATOR_ACTOR_NAME)
    except ValueError:
        return None


@ray.remote(num_cpus=0)
class PendingWeights:
    """Holds the trainer's weights sent before LengthAwareRollout started its Coordinator (verl's v1
    trainer syncs weights in `trainer.init()`, before it creates the agent-loop manager); `create`
    takes them (`take_pending_weights`), so a run resumed from a checkpoint starts from its weights."""

    def __init__(self):
        self.state: dict | None = None

    def put(self, state: dict) -> None:
        self.state = state

    def take(self) -> dict | None:
        state, self.state = self.state, None
        return state


def take_pending_weights() -> dict | None:
    """The weights held for a Coordinator that had not started (and the holder goes), or None."""
    try:
        holder = ray.get_actor(PENDING_WEIGHTS_ACTOR_NAME)
    except ValueError:
        return None
    state = ray.get(holder.take.remote())
    ray.kill(holder)
    return state


class WeightReceiver(BaseRollout):
    """verl's per-worker rollout object for `length_aware`: receives the trainer's weights.

    Every rank iterates the weights (verl's FSDP engine gathers each full tensor collectively);
    rank 0 keeps a CPU copy and sends the whole state dict to the Coordinator.
    """

    async def update_weights(self, weights: Iterable, wire_format: str = "named_tensors", **kwargs) -> None:
        if wire_format != "named_tensors":
            raise ValueError(
                f"LengthAwareRollout takes full weights, got wire format {wire_format!r}: set "
                "actor_rollout_ref.rollout.checkpoint_engine.backend=naive"
            )
        if kwargs.get("peft_config") is not None:
            raise ValueError(
                "LengthAwareRollout loads full weights, not LoRA adapters: set actor_rollout_ref.model.lora.merge=true"
            )
        leader = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        state_dict = {}
        for name, tensor in weights:
            if leader:
                state_dict[name] = tensor.detach().to("cpu", copy=True)
        if not leader:
            return
        coordinator = coordinator_actor()
        if coordinator is not None:
            await coordinator.update_weights.remote(state_dict)
            return
        if self.config.agent.agent_loop_manager_class != MANAGER_CLASS:
            raise ValueError(
                f"actor_rollout_ref.rollout.name={ROLLOUT_NAME} needs LengthAwareRollout to generate: add "
                f"+actor_rollout_ref.rollout.agent.agent_loop_manager_class={MANAGER_CLASS}"
            )
        # Not started yet (verl's v1 trainer syncs once before it creates the manager): held for `create`.
        # The handle kept here keeps the holder alive (an actor without handles is collected, named or not).
        self._pending = PendingWeights.options(name=PENDING_WEIGHTS_ACTOR_NAME, get_if_exists=True).remote()
        await self._pending.put.remote(state_dict)

    async def resume(self, tags: list[str]) -> None:
        """Nothing to restore: the Coordinator's workers keep their weights and KV cache."""

    async def release(self) -> None:
        """Nothing to free here: this object holds no weights or KV cache."""


class LengthAwareReplica(RolloutReplica):
    """verl's server replica for `length_aware`: a placeholder, since the Coordinator generates."""

    async def launch_servers(self) -> None:
        if self.rollout_mode != RolloutMode.HYBRID:
            raise ValueError(
                f"actor_rollout_ref.rollout.name={ROLLOUT_NAME} runs with the hybrid engine only: set "
                "actor_rollout_ref.hybrid_engine=true"
            )
        # verl's router keys replicas by address; there is no server behind it.
        self._server_address = f"{ROLLOUT_NAME}-replica-{self.replica_rank}"


def register() -> None:
    verl_rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.{WeightReceiver.__name__}"
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: LengthAwareReplica)


def is_registered() -> bool:
    in_rollouts = (ROLLOUT_NAME, "async") in verl_rollout_base._ROLLOUT_REGISTRY
    return in_rollouts and ROLLOUT_NAME in RolloutReplicaRegistry._registry


# Registered on import, whichever imports this module first: verl's plugin loader (through
# rollout_len.verl.plugin) or rollout_len.verl. When rollout_len.verl comes first, its `import verl`
# runs the plugin loader while this module is still half-imported; registering here covers both.
register()
