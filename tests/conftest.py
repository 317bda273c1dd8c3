import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Every test runs on one CPU thread: tiny models gain nothing from a second one and lose a lot when the cores
    are busy (OpenMP threads spin waiting for each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
