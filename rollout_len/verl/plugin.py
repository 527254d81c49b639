"""verl imports this module in every process (entry point group `verl.plugins` in pyproject.toml):
importing rollout_len.verl.backend registers the `length_aware` rollout backend, so that
`actor_rollout_ref.rollout.name=length_aware` resolves in verl's actor workers and trainer."""

import rollout_len.verl.backend  # noqa: F401  (registers on import)
