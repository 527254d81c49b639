"""Length-aware rollout: workers, the bucket manager, scheduling policies, the simulator."""

from rollout_len.rollout.costmodel import CostModel
from rollout_len.rollout.manager import BucketManager, PredictionQuality
from rollout_len.rollout.policies import POLICIES, Policy, make_policy, register_policy
from rollout_len.rollout.sim import load_trace, simulate

__all__ = ["CostModel", "BucketManager", "PredictionQuality", "POLICIES", "Policy", "make_policy",
           "register_policy", "load_trace", "simulate"]
