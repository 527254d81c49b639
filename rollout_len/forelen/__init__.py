"""ForeLen-lite: a length-prediction benchmark built with the policy itself (`rollout-len forelen ...`)."""
