"""Shared fixtures: small geometries so the suite stays fast on a 2-core CI machine."""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# the projector's disk cache goes to a throw-away folder, never the user's cache
os.environ["NAPARI_LSR_CACHE_DIR"] = tempfile.mkdtemp(prefix="napari-lsr-test-cache-")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
