"""Input validation shared by the ops' API boundaries (ValueError for bad shapes/values, TypeError for bad types)."""

from __future__ import annotations

import math

import torch

__all__ = ["check_impl", "check_tensor", "check_temperature"]


def check_impl(op: str, impl: str, choices: tuple[str, ...]) -> None:
    if impl not in choices:
        raise ValueError(f"{op}: impl must be one of {choices}, got {impl!r}")


def check_tensor(op: str, name: str, x: object, ndim: int, *, floating: bool | None = None) -> torch.Tensor:
    """`x` must be a torch.Tensor with `ndim` dims; floating=True/False also checks the dtype family."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dim(s), got shape {tuple(x.shape)}")
    if floating is True and not x.dtype.is_floating_point:
        raise TypeError(f"{op}: {name} must be a floating tensor, got dtype {x.dtype}")
    if floating is False and (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool):
        raise TypeError(f"{op}: {name} must be an integer tensor, got dtype {x.dtype}")
    return x


def check_temperature(op: str, temperature: object) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{op}: temperature must be a real number, got {type(temperature).__name__}")
    value = float(temperature)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{op}: temperature must be finite and > 0, got {temperature!r}")
    return value
