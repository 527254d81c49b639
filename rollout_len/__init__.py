"""rollout_len: length-aware RL rollouts (predict response lengths from the policy's hidden states,
schedule decoding around them). See README.md and docs/architecture.md."""

__version__ = "0.1.0"
