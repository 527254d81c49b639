"""Package-level behaviour: the exports, lazy/guarded triton import, the interpreter path."""

import os
import subprocess
import sys

import rollout_len.kernels as kernels


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    full_env.update(env, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)


def test_exports():
    assert set(kernels.__all__) == {
        "linear_entropy",
        "logits_entropy",
        "egtp_pool",
        "online_pool_update",
        "OnlinePoolState",
    }
    assert all(callable(getattr(kernels, name)) for name in kernels.__all__)


def test_import_without_triton_and_interpreter_in_fresh_process():
    """(1) With triton unimportable, the package imports and the torch paths work; impl='triton' is a clear
    RuntimeError. (2) In a fresh process with TRITON_INTERPRET=1 set before anything imports triton, importing
    the package does not import triton, and the first triton launch runs through the CPU interpreter."""
    blocked = _python(
        "import sys; sys.modules['triton'] = None\n"
        "import torch; from rollout_len.kernels import linear_entropy, egtp_pool\n"
        "h, w = torch.randn(3, 8), torch.randn(20, 8)\n"
        "assert linear_entropy(h, w).shape == (3,)\n"
        "assert egtp_pool(h, torch.rand(3), torch.tensor([0, 3])).shape == (1, 8)\n"
        "try:\n    linear_entropy(h, w, impl='triton')\nexcept RuntimeError as e:\n    print('RAISED', e)\n",
    )
    assert blocked.returncode == 0, blocked.stderr
    assert "RAISED" in blocked.stdout and "triton" in blocked.stdout

    interp = _python(
        "import sys, torch\n"
        "import rollout_len.kernels as k\n"
        "assert 'triton' not in sys.modules, 'package import must not import triton'\n"
        "h, w, b = torch.randn(5, 37), torch.randn(50, 37) * 0.3, torch.randn(50)\n"
        "d = (k.linear_entropy(h, w, b, impl='triton') - k.linear_entropy(h, w, b, impl='naive')).abs().max()\n"
        "assert 'triton' in sys.modules\n"
        "from triton.runtime.interpreter import InterpretedFunction\n"
        "from rollout_len.kernels import _triton\n"
        "assert all(isinstance(f, InterpretedFunction) for f in _triton._JIT_CACHE.values())\n"
        "print('DIFF', float(d))\n",
        TRITON_INTERPRET="1",
    )
    assert interp.returncode == 0, interp.stderr
    assert float(interp.stdout.split("DIFF")[1]) < 1e-5
