"""The scheduler: decides where and when each sample of a rollout step decodes. Decide-only.

    policies        the registry (pool, fcfs, static_padded, bucketed_padded, length_aware, oracle,
                    april, length_aware_partial)
    bucket_manager  every sample's state; carries out a policy's decisions as per-worker Orders
    view            the read-only SchedulerView policies decide from
    predictions     length buckets, the constant prior, prediction-quality gate
    planner         makespan estimates for candidate admission orders
    costmodel       step and prefill times (YAML profiles with sources, `profiles/`)
    messages        Orders (scheduler -> worker) and Report (worker -> scheduler)
    driver          the step loop over any Cluster (Ray, in-process, simulated)
    timeline        what happened in a step; Gantt charts
    simulator       simulated workers on a cost model and a length trace
    partial         partial (stall-free) steps over many steps: quota of whole groups, carry-over, staleness

No module here imports torch, transformers, Ray or the engine (a test checks it): the live rollout
(rollout_len.rollout) and the simulator run these same objects.
"""

from rollout_len.sched.bucket_manager import BucketManager
from rollout_len.sched.costmodel import DEFAULT_COST_PROFILE, CostModel
from rollout_len.sched.driver import drive
from rollout_len.sched.partial import PartialConfig, PartialRun, simulate_partial
from rollout_len.sched.policies import POLICIES, Policy, make_policy, register_policy
from rollout_len.sched.predictions import PredictionQuality
from rollout_len.sched.simulator import load_trace, simulate

__all__ = [
    "BucketManager",
    "CostModel",
    "DEFAULT_COST_PROFILE",
    "POLICIES",
    "PartialConfig",
    "PartialRun",
    "Policy",
    "PredictionQuality",
    "drive",
    "load_trace",
    "make_policy",
    "register_policy",
    "simulate",
    "simulate_partial",
]
