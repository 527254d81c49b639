"""Benchmarks: commands that print figures and write JSON (`rollout-len bench ...`)."""
