"""`python gpt2.py` as a learner runs it: a subprocess, its output and its exit code."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpt2
from gpt2_fixtures import write_tiny_checkpoint

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
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), TINY)


def greedy_text(checkpoint: Path, prompt: str, new_tokens: int) -> str:
    """What the library itself generates greedily from `checkpoint`, decoded."""
    model, _ = gpt2.load_checkpoint(checkpoint)
    tokenizer = gpt2.get_tokenizer()
    idx = gpt2.text_to_token_ids(prompt, tokenizer)
    out = gpt2.generate(model.eval(), idx, new_tokens, model.cfg["context_length"])
    return gpt2.token_ids_to_text(out, tokenizer)


@pytest.mark.parametrize("dtype", [None, "fp32"])
def test_checkpoint_generates_the_librarys_greedy_text(tiny_checkpoint, dtype):
    dtype_args = ("--dtype", dtype) if dtype else ()
    result = run("--checkpoint", str(tiny_checkpoint), "--prompt", "Every effort moves you",
                 "--max-new-tokens", "12", "--temperature", "0", *dtype_args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == greedy_text(tiny_checkpoint, "Every effort moves you", 12) + "\n"


def test_stream_prints_the_same_text_as_a_batch_run(tiny_checkpoint):
    common = ("--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "10", "--seed", "7")
    streamed, whole = run(*common, "--stream", "--verbose"), run(*common)
    assert streamed.returncode == whole.returncode == 0, streamed.stderr + whole.stderr
    assert streamed.stdout == whole.stdout and streamed.stdout.startswith("Every effort moves you")
    n_parameters = gpt2.count_parameters(gpt2.load_checkpoint(tiny_checkpoint)[0])
    assert re.search(rf"\[10 tokens in [\d.]+ s: [\d.]+ tokens/s on cpu in fp32, "
                     rf"{n_parameters:,} parameters\]", streamed.stderr), streamed.stderr
    assert whole.stderr == ""  # only --verbose reports


def test_empty_prompt_starts_from_endoftext(tiny_checkpoint):
    result = run("--checkpoint", str(tiny_checkpoint), "--prompt", "", "--max-new-tokens", "5",
                 "--temperature", "0")
    assert result.returncode == 0, result.stderr
    expected = greedy_text(tiny_checkpoint, "<|endoftext|>", 5)[len("<|endoftext|>"):]
    assert result.stdout == expected + "\n"


def test_a_prompt_longer_than_the_context_is_cut_with_a_note(tiny_checkpoint):
    result = run("--checkpoint", str(tiny_checkpoint), "--prompt", "word" + " word" * 39,
                 "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    assert "the prompt has 40 tokens; the model reads only the last 32" in result.stderr


def test_unknown_model_size_exits_2_listing_valid_sizes():
    result = run("--model-size", "7B")
    assert result.returncode == 2
    assert all(size in result.stderr for size in ("124M", "355M", "774M", "1558M"))


def test_no_network_no_files_explains_instead_of_a_traceback(tmp_path):
    result = run("--models-dir", str(tmp_path), env_mirror="http://127.0.0.1:9")
    assert result.returncode == 1
    assert "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/" in result.stderr
    assert "GPT2_MIRROR" in result.stderr and str(tmp_path) in result.stderr
    assert "1_PreTraining/pretrain.py" in result.stderr and "--checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (("--temperature", "-1"), "temperature must be >= 0"),
    (("--top-p", "2"), "top_p must be in"),
    (("--checkpoint", "missing.pth"), "no checkpoint at missing.pth"),
    (("--checkpoint", str(ROOT / "README.md")), "is not a PyTorch checkpoint"),
    (("--device", "foo"), "unknown device 'foo'"),
    (("--device", "tpu"), "unknown device 'tpu'"),
] + ([] if torch.backends.mps.is_available() else [(("--device", "mps"), "has no mps device")])
  + ([] if torch.cuda.is_available() else [(("--device", "cuda"), "has no cuda device")]))
def test_bad_input_gets_a_message(args, message, tiny_checkpoint):
    result = run("--checkpoint", str(tiny_checkpoint), *args)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "weights_only=False" not in result.stderr


def test_a_negative_token_count_is_refused(tiny_checkpoint):
    result = run("--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "-3")
    assert result.returncode == 2 and "--max-new-tokens must be at least 1" in result.stderr


def test_help_documents_every_flag():
    result = run("--help")
    assert result.returncode == 0
    for flag in ("--prompt", "--model-size", "--checkpoint", "--max-new-tokens", "--temperature",
                 "--top-k", "--top-p", "--seed", "--device", "--models-dir", "--stream", "--dtype",
                 "--verbose"):
        assert flag in result.stdout


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_smaller_number_formats_generate(dtype, tiny_checkpoint):
    result = run("--checkpoint", str(tiny_checkpoint), "--dtype", dtype, "--max-new-tokens", "8",
                 "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Every effort moves you")
    assert len(result.stdout) > len("Every effort moves you\n")
    assert re.search(rf"\[8 tokens in .* tokens/s on cpu in {dtype}, ", result.stderr), result.stderr
