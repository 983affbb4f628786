import os
import uuid

import pytest

from composepar import _arbiter, _config


@pytest.fixture
def domain():
    """A domain no other test (or the user's real session) shares; removed afterwards."""
    name = f"test-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield name
    path = _config.segment_path(name)
    _arbiter._forget_handle(path)
    try:
        os.unlink(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        pass
    except PermissionError:
        pass


START_METHODS = ["fork", "spawn", "forkserver"]
