import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Heads this small train as fast on one thread, and many times slower on two when another process
    holds a core (fit_head and the coordinator's re-fit thread use one too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
