import pytest
import torch

import synth


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Every test runs on one CPU thread: tiny models gain nothing from a second one and lose a lot when the cores
    are busy (OpenMP threads spin waiting for each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def micro(tmp_path_factory):
    """The micro synthetic benchmark, written once for every test that trains on it (tests that edit it copy it)."""
    root = str(tmp_path_factory.mktemp("micro"))
    synth.generate(root, "micro", seed=0)
    return root
