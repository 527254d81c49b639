"""rollout_len inside verl: LengthAwareRollout generates a PPO/GRPO trainer's rollouts. See docs/verl.md.

trainer.use_v1=false
actor_rollout_ref.rollout.name=length_aware
actor_rollout_ref.rollout.tensor_model_parallel_size=1
+actor_rollout_ref.rollout.agent.agent_loop_manager_class=rollout_len.verl.LengthAwareRollout

The same class also serves verl's v1 trainer in sync mode (trainer.use_v1=true, verl's default), writing
trajectories to TransferQueue (rollout_len.verl.v1); docs/verl.md, *Trainer paths*, says how, and why partial
(stall-free) steps go through neither trainer.
"""

from rollout_len.verl.agent_loop import POLICY_KEY, RESULT_KEY, SEED_KEY, LengthAwareRollout
from rollout_len.verl.backend import ROLLOUT_NAME

__all__ = ["LengthAwareRollout", "ROLLOUT_NAME", "SEED_KEY", "POLICY_KEY", "RESULT_KEY"]
