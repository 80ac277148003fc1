"""`python gpt2.py`: its output and exit codes, run in-process through `main(argv)`, plus one
real `python gpt2.py` subprocess to show that the script itself works."""
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpt2
from gpt2_fixtures import run_gpt2_cli, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY = {**gpt2.GPT_CONFIG_124M, "context_length": 32, "emb_dim": 32, "n_heads": 4, "n_layers": 2}


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


def test_the_script_generates_the_librarys_greedy_text(tiny_checkpoint):
    result = subprocess.run(
        [sys.executable, str(ROOT / "gpt2.py"), "--checkpoint", str(tiny_checkpoint),
         "--prompt", "Every effort moves you", "--max-new-tokens", "12", "--temperature", "0"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == greedy_text(tiny_checkpoint, "Every effort moves you", 12) + "\n"


def test_stream_prints_the_same_text_as_a_batch_run(tiny_checkpoint, capsys):
    common = ("--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "10", "--seed", "7")
    streamed = run_gpt2_cli(capsys, *common, "--stream", "--verbose")
    whole = run_gpt2_cli(capsys, *common)
    assert streamed[0] == whole[0] == 0, streamed[2] + whole[2]
    assert streamed[1] == whole[1] and streamed[1].startswith("Every effort moves you")
    n_parameters = gpt2.count_parameters(gpt2.load_checkpoint(tiny_checkpoint)[0])
    assert re.search(rf"\[10 tokens in [\d.]+ s: [\d.]+ tokens/s on cpu in fp32, "
                     rf"{n_parameters:,} parameters\]", streamed[2]), streamed[2]
    assert whole[2] == ""  # only --verbose reports


def test_sampling_depends_on_the_seed(tiny_checkpoint, capsys):
    common = ("--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "20", "--top-k", "0")
    texts = {run_gpt2_cli(capsys, *common, "--seed", str(seed))[1] for seed in (1, 2, 1)}
    assert len(texts) == 2  # seeds 1 and 1 agree, seed 2 differs


def test_empty_prompt_starts_from_endoftext(tiny_checkpoint, capsys):
    code, out, err = run_gpt2_cli(capsys, "--checkpoint", str(tiny_checkpoint), "--prompt", "",
                                  "--max-new-tokens", "5", "--temperature", "0")
    assert code == 0, err
    assert out == greedy_text(tiny_checkpoint, "<|endoftext|>", 5)[len("<|endoftext|>"):] + "\n"


def test_a_prompt_longer_than_the_context_is_cut_with_a_note(tiny_checkpoint, capsys):
    code, _, err = run_gpt2_cli(capsys, "--checkpoint", str(tiny_checkpoint), "--prompt",
                                "word" + " word" * 39, "--max-new-tokens", "3")
    assert code == 0, err
    assert "the prompt has 40 tokens; the model reads only the last 32" in err


def test_no_network_no_files_explains_instead_of_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPT2_MIRROR", "http://127.0.0.1:9")  # nothing listens on port 9
    code, _, err = run_gpt2_cli(capsys, "--models-dir", str(tmp_path))
    assert code == 2
    assert "OpenAI's GPT-2 124M could not be fetched" in err
    assert "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/" in err
    assert "GPT2_MIRROR" in err and "python 1_PreTraining/pretrain.py" in err
    assert "data/course-model/model.pth" in err and "shared/mirror" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (("--temperature", "-1"), "temperature must be >= 0"),
    (("--top-p", "2"), "top_p must be in"),
    (("--checkpoint", "missing.pth"), "no checkpoint at missing.pth"),
    (("--checkpoint", str(ROOT / "README.md")), "is not a PyTorch checkpoint"),
    (("--device", "foo"), "unknown device 'foo'"),
    (("--device", "tpu"), "unknown device 'tpu'"),
] + ([] if torch.backends.mps.is_available() else [(("--device", "mps"), "has no mps device")])
  + ([] if torch.cuda.is_available() else [(("--device", "cuda"), "has no cuda device")]))
def test_bad_input_gets_one_line_and_exit_2(args, message, tiny_checkpoint, capsys):
    code, _, err = run_gpt2_cli(capsys, "--checkpoint", str(tiny_checkpoint), *args)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "weights_only=False" not in err


@pytest.mark.parametrize("args, message", [
    (("--max-new-tokens", "-3"), "--max-new-tokens must be at least 1"),
    (("--instruction", "Hi", "--stream"), "drop it for --instruction"),
])
def test_contradictory_flags_are_refused(args, message, tiny_checkpoint, capsys):
    code, _, err = run_gpt2_cli(capsys, "--checkpoint", str(tiny_checkpoint), *args)
    assert code == 2 and message in err


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_smaller_number_formats_generate(dtype, tiny_checkpoint, capsys):
    code, out, err = run_gpt2_cli(capsys, "--checkpoint", str(tiny_checkpoint), "--dtype", dtype,
                                  "--max-new-tokens", "8", "--verbose")
    assert code == 0, err
    assert out.startswith("Every effort moves you") and len(out) > len("Every effort moves you\n")
    assert re.search(rf"\[8 tokens in .* tokens/s on cpu in {dtype}, ", err), err


def test_the_library_never_imports_the_speed_module():
    """gpt2_fast builds on gpt2; only `python gpt2.py`, the script, imports it."""
    code = "import sys, gpt2; print('gpt2_fast' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_num_samples_gives_that_many_continuations_of_one_prompt(tiny_checkpoint, capsys):
    code, out, err = run_gpt2_cli(capsys, "--checkpoint", str(tiny_checkpoint), "--num-samples",
                                  "3", "--max-new-tokens", "6", "--seed", "5", "--verbose")
    assert code == 0, err
    samples = out.split("=== sample ")[1:]
    assert [s.split(" ===")[0] for s in samples] == ["1 of 3", "2 of 3", "3 of 3"]
    texts = [s.split("===\n", 1)[1] for s in samples]
    assert all(t.startswith("Every effort moves you") for t in texts) and len(set(texts)) == 3
    assert re.search(r"\[3 x 6 tokens in ", err), err


def test_num_samples_at_temperature_0_are_all_the_greedy_text(tiny_checkpoint, capsys):
    code, out, _ = run_gpt2_cli(capsys, "--checkpoint", str(tiny_checkpoint), "--num-samples",
                                "2", "--max-new-tokens", "5", "--temperature", "0")
    greedy = greedy_text(tiny_checkpoint, "Every effort moves you", 5)
    assert code == 0 and out == f"=== sample 1 of 2 ===\n{greedy}\n=== sample 2 of 2 ===\n{greedy}\n"


@pytest.mark.parametrize("args, message", [
    (("--num-samples", "0"), "--num-samples must be at least 1"),
    (("--num-samples", "2", "--stream"), "drop it for --instruction and --num-samples"),
])
def test_bad_sample_counts_are_refused(args, message, tiny_checkpoint, capsys):
    code, _, err = run_gpt2_cli(capsys, "--checkpoint", str(tiny_checkpoint), *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_interactive_answers_each_line_until_the_input_ends(tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\nThe king\n"))
    code, out, err = run_gpt2_cli(capsys, "--checkpoint", str(tiny_checkpoint), "--interactive",
                                  "--max-new-tokens", "4", "--temperature", "0")
    assert code == 0, err
    expected = [greedy_text(tiny_checkpoint, p, 4) for p in ("Hello", "The king")]
    assert out.splitlines() == expected and "Ctrl-D" in err


def test_ctrl_c_stops_one_generation_not_the_program(tiny_checkpoint, capsys, monkeypatch):
    real_stream = gpt2.stream_tokens
    calls = []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        for i, token in enumerate(real_stream(*args, **kwargs)):
            if len(calls) == 1 and i == 2:
                raise KeyboardInterrupt  # Ctrl-C during the first answer
            yield token

    monkeypatch.setattr(gpt2, "stream_tokens", interrupted_once)
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\nThe king\n"))
    code, out, err = run_gpt2_cli(capsys, "--checkpoint", str(tiny_checkpoint), "--interactive",
                                  "--max-new-tokens", "4", "--temperature", "0")
    assert code == 0 and "[stopped]" in err
    assert out.splitlines() == [greedy_text(tiny_checkpoint, "The king", 4)]
