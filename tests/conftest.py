"""Shared test set-up: chapter modules on sys.path, and a loopback mirror server."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Chapter folders: their exercises, and their modules (pretrain.py, ollama_judge.py, ...).
CHAPTERS = ("0_Basics", "1_PreTraining", "2_FineTuning_Classification", "3_FineTuning_Instructions")
sys.path[:0] = [str(ROOT / chapter) for chapter in CHAPTERS]

import exercises  # noqa: E402  (each chapter has a package of this name: look in all of them)
exercises.__path__[:] = [str(ROOT / chapter / "exercises") for chapter in CHAPTERS]

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
