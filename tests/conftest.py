import os

import torch

# No network here: never let transformers try a hub download inside the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Without a GPU, Triton kernels run through triton's CPU interpreter. It must be set before anything
# (transformers, torch._dynamo) imports triton, so it lives here rather than in tests/kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
