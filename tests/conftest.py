"""Shared test set-up: chapter modules on sys.path, and a loopback mirror server."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "0_Basics"))
# After 0_Basics, whose `exercises` package is the one `import exercises` finds; the tests of
# this chapter's exercises load them by file path (test_exercises_instructions.py).
sys.path.append(str(ROOT / "3_FineTuning_Instructions"))

import gpt2_fast  # noqa: E402
from gpt2_fixtures import MirrorServer  # noqa: E402  (needs the path above)

ONEDNN_USABLE = gpt2_fast.onednn_linear_available()


def with_backend(model, backend: str):
    """`model` as it is ("plain"), or with gpt2_fast's layers swapped in and every fp32 CPU
    matmul, however small, on PyTorch's default library ("pytorch") or on oneDNN ("onednn")."""
    if backend == "plain":
        return model
    return gpt2_fast.accelerate(model, onednn=backend == "onednn", min_side=0)


@pytest.fixture(params=["plain", "pytorch", "onednn"])
def backend(request) -> str:
    """Run a test on the plain model, then accelerated with either matmul library."""
    if request.param == "onednn" and not ONEDNN_USABLE:
        pytest.skip("this PyTorch has no oneDNN linear kernel")
    return request.param


@pytest.fixture
def mirror_server(tmp_path: Path):
    """A loopback HTTP mirror serving tmp_path/"mirror" (HOST/PATH layout)."""
    server = MirrorServer(tmp_path / "mirror")
    yield server
    server.close()
