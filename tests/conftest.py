"""Shared fixtures of the tests; the tiny backbones themselves are in ``tiny_models.py``."""

from __future__ import annotations

import pytest
import torch
from tiny_models import BACKBONES

# The fixture folder holds data and the script that made it, not tests.
collect_ignore_glob = ["models/fixtures/*"]


@pytest.fixture(params=sorted(BACKBONES))
def backbone_family(request):
    return request.param


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (restored after): tiny models gain nothing from a second thread
    and lose a lot when the cores are shared. Modules opt in with ``pytestmark = pytest.mark.usefixtures``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_SESSION_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _threads_are_left_as_found(request):
    """A test (or a fixture it uses) that changes torch's thread count for good changes every later test
    (the root conftest.py sets one thread): results would depend on the order tests run in. Checked after
    each test, and put back (issue 21: the paper toys' module fixture set it without restoring it)."""
    yield
    threads = torch.get_num_threads()
    if threads != _SESSION_THREADS:
        torch.set_num_threads(_SESSION_THREADS)
        pytest.fail(
            f"{request.node.nodeid} left torch.get_num_threads() = {threads} (the session started with "
            f"{_SESSION_THREADS}); restore it (tests/conftest.py's one_thread fixture does)",
            pytrace=False,
        )
