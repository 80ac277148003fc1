"""Shared test set-up: chapter modules on sys.path, and a loopback mirror server."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "0_Basics"))

from gpt2_fixtures import MirrorServer  # noqa: E402  (needs the path above)


@pytest.fixture
def mirror_server(tmp_path: Path):
    """A loopback HTTP mirror serving tmp_path/"mirror" (HOST/PATH layout)."""
    server = MirrorServer(tmp_path / "mirror")
    yield server
    server.close()
