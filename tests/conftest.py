"""Shared fixtures: small geometries so the suite stays fast on a 2-core CI machine."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# the projector's disk cache goes to a throw-away folder, never the user's cache, and is
# removed at exit (a run leaves up to ~0.7 GB there; 181 left-behind folders once filled a disk)
os.environ["NAPARI_LSR_CACHE_DIR"] = _CACHE = tempfile.mkdtemp(prefix="napari-lsr-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
