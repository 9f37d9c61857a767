"""Shared fixtures of the tests; the tiny backbones themselves are in ``tiny_models.py``."""

from __future__ import annotations

import pytest
from tiny_models import BACKBONES

# The fixture folder holds data and the script that made it, not tests.
collect_ignore_glob = ["models/fixtures/*"]


@pytest.fixture(params=sorted(BACKBONES))
def backbone_family(request):
    return request.param
