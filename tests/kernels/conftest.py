"""Kernel tests: triton kernels run through triton's CPU interpreter when there is no GPU
(tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton). On a CUDA machine the
kernels run compiled on the GPU.
"""

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    """Where triton kernels run: the GPU if there is one, else CPU tensors through the interpreter."""
    return DEVICE
