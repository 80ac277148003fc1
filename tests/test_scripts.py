"""Every script answers a missing model file the same way: one line on stderr that names the
command making it, and exit code 2."""
import pytest

import classify
import finetune_classifier
import finetune_instructions
import hellaswag
from gpt2_fixtures import run_gpt2_cli


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("main, flag", [
    (finetune_classifier.main, "--init"),
    (finetune_instructions.main, "--init"),
    (hellaswag.main, "--checkpoint"),
])
def test_a_missing_base_model_or_checkpoint_exits_2(main, flag, tmp_path, capsys):
    assert main([flag, str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in one_line(capsys.readouterr().err)


def test_gpt2_cli_missing_checkpoint_exits_2(tmp_path, capsys):
    code, _, err = run_gpt2_cli(capsys, "--checkpoint", str(tmp_path / "missing.pth"))
    assert code == 2 and "no checkpoint at" in one_line(err)


def test_classify_without_a_classifier_names_the_command_that_makes_one(tmp_path, capsys):
    assert classify.main(["--model", str(tmp_path / "missing.pth"), "hello"]) == 2
    assert "finetune_classifier.py" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("main", [finetune_classifier.main, finetune_instructions.main])
def test_an_unknown_base_model_lists_the_accepted_ones(main, capsys):
    assert main(["--init", "gpt2-large"]) == 2
    line = one_line(capsys.readouterr().err)
    assert all(name in line for name in ("openai-124M", "openai-355M", "random"))
