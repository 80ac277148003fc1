"""Shared test set-up: chapter modules on sys.path, and a loopback mirror server."""
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "0_Basics"))

import gpt2_fast  # noqa: E402
from gpt2_fixtures import MirrorServer  # noqa: E402  (needs the path above)

ONEDNN_USABLE = gpt2_fast.onednn_linear_available()


def import_exercises(chapter: str, module: str) -> ModuleType:
    """Import <chapter>/exercises/<module>.py, e.g. ("1_PreTraining", "pretraining").

    Every chapter calls its package `exercises` (the notebooks import it from their own folder),
    and 0_Basics' is the one on sys.path, so another chapter's package is imported from its file
    under a name of its own, `exercises_<chapter>`.
    """
    package = f"exercises_{chapter}"
    if package not in sys.modules:
        folder = ROOT / chapter / "exercises"
        spec = importlib.util.spec_from_file_location(
            package, folder / "__init__.py", submodule_search_locations=[str(folder)])
        sys.modules[package] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[package])
    return importlib.import_module(f"{package}.{module}")


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
