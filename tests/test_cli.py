"""`python gpt2.py` as a learner runs it: a subprocess, its output and its exit code."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpt2

ROOT = Path(__file__).resolve().parent.parent
TINY = {**gpt2.GPT_CONFIG_124M, "context_length": 32, "emb_dim": 32, "n_heads": 4, "n_layers": 2}


def run(*args: str, env_mirror: str | None = None) -> subprocess.CompletedProcess:
    import os
    env = {k: v for k, v in os.environ.items() if k != "GPT2_MIRROR"}
    if env_mirror is not None:
        env["GPT2_MIRROR"] = env_mirror
    return subprocess.run([sys.executable, str(ROOT / "gpt2.py"), *args], capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    gpt2.save_checkpoint(path, gpt2.GPTModel(TINY))
    return path


def test_checkpoint_generates_text(tiny_checkpoint):
    result = run("--checkpoint", str(tiny_checkpoint), "--prompt", "Every effort moves you",
                 "--max-new-tokens", "12", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    text = result.stdout.rstrip("\n")
    assert text.startswith("Every effort moves you") and len(text) > len("Every effort moves you")


def test_stream_prints_the_same_text_as_a_batch_run(tiny_checkpoint):
    common = ("--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "10", "--seed", "7")
    streamed, whole = run(*common, "--stream", "--verbose"), run(*common)
    assert streamed.returncode == whole.returncode == 0, streamed.stderr + whole.stderr
    assert streamed.stdout == whole.stdout
    assert "tokens/s" in streamed.stderr


def test_empty_prompt_starts_from_endoftext(tiny_checkpoint):
    result = run("--checkpoint", str(tiny_checkpoint), "--prompt", "", "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_unknown_model_size_exits_2_listing_valid_sizes():
    result = run("--model-size", "7B")
    assert result.returncode == 2
    assert all(size in result.stderr for size in ("124M", "355M", "774M", "1558M"))


def test_no_network_no_files_explains_instead_of_a_traceback(tmp_path):
    result = run("--models-dir", str(tmp_path), env_mirror="http://127.0.0.1:9")
    assert result.returncode == 1
    assert "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/" in result.stderr
    assert "GPT2_MIRROR" in result.stderr and str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (("--temperature", "-1"), "temperature must be >= 0"),
    (("--top-p", "2"), "top_p must be in"),
    (("--checkpoint", "missing.pth"), "no checkpoint at missing.pth"),
])
def test_bad_input_gets_a_message(args, message, tiny_checkpoint):
    result = run(*args)
    assert result.returncode == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_documents_every_flag():
    result = run("--help")
    assert result.returncode == 0
    for flag in ("--prompt", "--model-size", "--checkpoint", "--max-new-tokens", "--temperature",
                 "--top-k", "--top-p", "--seed", "--device", "--models-dir", "--stream"):
        assert flag in result.stdout


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_smaller_number_formats_generate(dtype, tiny_checkpoint):
    result = run("--checkpoint", str(tiny_checkpoint), "--dtype", dtype, "--max-new-tokens", "8",
                 "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Every effort moves you") and f"in {dtype}" in result.stderr
