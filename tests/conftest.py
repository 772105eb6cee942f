"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny ops gain nothing from a second thread and lose much to its synchronisation on a busy
    machine: modules of many tiny forwards run on one (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
