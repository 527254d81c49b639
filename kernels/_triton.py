"""Lazy, guarded access to Triton for the kernels in this package.

Nothing here imports triton at package import time: CPU-only machines (or ones with a broken triton)
still import `rollout_len.kernels`, and the torch implementations work there.

Each kernel module writes its kernels as plain undecorated functions whose bodies use a module-level
name `tl`. `lazy_jit(fn)` imports triton on first use, binds `tl` in the kernel's module globals and
applies `triton.jit`. The result is cached per value of TRITON_INTERPRET, because triton decides
interpreter-vs-compiler at decoration time: setting TRITON_INTERPRET=1 before the first launch is
enough to run every kernel on CPU tensors through triton's interpreter.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["cdiv", "interpret_mode", "triton_available", "lazy_jit", "check_triton_inputs", "use_triton"]

_JIT_CACHE: dict[tuple[Callable[..., Any], bool], Any] = {}
_AVAILABLE: bool | None = None


def interpret_mode() -> bool:
    """True when TRITON_INTERPRET asks for triton's numpy interpreter (runs kernels on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "on", "yes"}


def triton_available() -> bool:
    """Whether `import triton, triton.language` works here (cached after the first call)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
        except Exception:  # ImportError, or a triton whose own import fails on this machine
            _AVAILABLE = False
        else:
            _AVAILABLE = True
    return _AVAILABLE


def lazy_jit(fn: Callable[..., Any]) -> Any:
    """`triton.jit(fn)`, built on first use (and again if TRITON_INTERPRET changed since)."""
    key = (fn, interpret_mode())
    kernel = _JIT_CACHE.get(key)
    if kernel is None:
        if not triton_available():
            raise RuntimeError("impl='triton' needs a working `triton` install; use the torch implementation")
        import triton
        import triton.language as tl

        fn.__globals__["tl"] = tl  # the kernel bodies refer to `tl`; bind it in their module
        kernel = _JIT_CACHE[key] = triton.jit(fn)
    return kernel


def check_triton_inputs(op: str, *tensors: torch.Tensor) -> None:
    """Raise ValueError unless the tensors can be handed to a triton kernel (CUDA, or CPU under the interpreter)."""
    if not triton_available():
        raise RuntimeError(f"{op}: impl='triton' needs a working `triton` install")
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{op}: all tensors must be on one device, got {sorted(str(d) for d in devices)}")
    device = devices.pop()
    if device.type != "cuda" and not interpret_mode():
        raise ValueError(
            f"{op}: impl='triton' needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 before the first "
            "launch to run the kernel through triton's CPU interpreter"
        )


def use_triton(impl: str, device: torch.device) -> bool:
    """Resolve impl='auto': triton for CUDA tensors when triton imports, the torch implementation otherwise."""
    return impl == "triton" or (impl == "auto" and device.type == "cuda" and triton_available())


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive ints (grid sizes)."""
    return -(-a // b)
