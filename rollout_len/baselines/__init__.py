"""Baseline length predictors for ForeLen-lite, all behind one interface (see base.py): fit on the
train split, choose settings on val, predict on test.

    rollout-len forelen eval --data data/forelen/rl --methods ssjf_reg,trail,siblings

| name | family | input |
| --- | --- | --- |
| `constant` | RL-native | nothing: the train median length, at admission (t = 0) only |
| `survival` | RL-native | nothing but t and the budget: the train median of L - t over samples with L > t (in flight) |
| `survival_group` | RL-native | `survival` over the other samples of the same prompt that ran past t |
| `ssjf_reg`, `ssjf_mc` | SSJF (Qiu et al. 2024) | prompt text → frozen proxy encoder → regression / multi-class head |
| `s3` | S3 (Jin et al. 2023) | prompt text → frozen proxy encoder → length-bucket classifier |
| `ltr_c` | learning to rank (Fu et al. 2024) | prompt text → frozen proxy encoder → ListMLE scorer |
| `trail` | TRAIL (Shahout et al. 2025) | policy mid-layer prompt mean → bin classifier, refined per decode step |
| `pia` | PiA (Zheng et al. 2023) | the policy states its own length; the number is parsed |
| `tpv` | TPV (Eisenstadt et al. 2025) | linear probe of progress t/N on the policy's final-layer states |
| `history` | RL-native (RhymeRL-style) | the mean length of the other samples of the same prompt |
| `siblings` | RL-native (Seer-style) | the group's samples already finished at decode step t |
"""

from rollout_len.baselines.base import Baseline, ForeLenData, NotApplicable, evaluate_baseline
from rollout_len.baselines.pia import PiA
from rollout_len.baselines.proxy import LearningToRank, S3Buckets, SSJFMultiClass, SSJFReg
from rollout_len.baselines.rl_native import Constant, History, Siblings, Survival, SurvivalGroup
from rollout_len.baselines.tpv import TPV
from rollout_len.baselines.trail import Trail

__all__ = ["BASELINES", "Baseline", "ForeLenData", "NotApplicable", "evaluate_baseline"]

BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls
    for cls in (
        Constant,
        Survival,
        SurvivalGroup,
        SSJFReg,
        SSJFMultiClass,
        S3Buckets,
        LearningToRank,
        Trail,
        PiA,
        TPV,
        History,
        Siblings,
    )
}
