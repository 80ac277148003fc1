"""1_PreTraining/hellaswag.py: the ending scorer on rigged models, the jsonl reader, the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import gpt2
from gpt2_fixtures import write_tiny_checkpoint
from hellaswag import (MalformedExampleError, encode_example, ending_losses, evaluate_hellaswag,
                       load_examples, load_hellaswag, pad_rows)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "1_PreTraining" / "hellaswag.py"
TOKENIZER = gpt2.get_tokenizer()
VOCAB = 50257
TINY = {**gpt2.GPT_CONFIG_124M, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2}

CONTEXT = "A man is sitting on a roof. He"
# No token appears in two of these endings, so favouring one ending's tokens favours it alone.
ENDINGS = ["walks away slowly", "is ripping level tiles off", "holds a Rubik cube",
           "hammers nails into wood"]


class RiggedModel(nn.Module):
    """Ignores its input: the same logits at every position, `favour[token]` for the tokens it
    names and 0 for the rest of GPT-2's vocabulary."""

    def __init__(self, favour: dict[int, float], context_length: int = 64):
        super().__init__()
        self.cfg = {"context_length": context_length}
        logits = torch.zeros(VOCAB)
        for token, logit in favour.items():
            logits[token] = logit
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*idx.shape, VOCAB)


class BigramModel(nn.Module):
    """Predicts from the current token alone: after token `a` it strongly expects `table[a]`."""

    def __init__(self, table: dict[int, int], context_length: int = 64):
        super().__init__()
        self.cfg = {"context_length": context_length}
        self.table = table
        self.unused = nn.Parameter(torch.zeros(1), requires_grad=False)  # says the device

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*idx.shape, VOCAB)
        for current, following in self.table.items():
            logits[..., following] += 15.0 * (idx == current)
        return logits


def ending_tokens(ending: str) -> list[int]:
    return TOKENIZER.encode(" " + ending)


def rotated(favoured: int) -> list[dict]:
    """Four examples, the ending ENDINGS[favoured] the right one and in a different place in each."""
    examples = []
    for label in range(4):
        endings = [e for i, e in enumerate(ENDINGS) if i != favoured]
        endings.insert(label, ENDINGS[favoured])
        examples.append({"ctx": CONTEXT, "endings": endings, "label": label})
    return examples


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_endings_share_no_token():
    seen = [set(ending_tokens(e)) for e in ENDINGS]
    assert sum(map(len, seen)) == len(set().union(*seen))


@pytest.mark.parametrize("favoured", range(4))
def test_scorer_picks_the_ending_the_model_makes_far_more_likely(favoured):
    model = RiggedModel({t: 15.0 for t in ending_tokens(ENDINGS[favoured])})
    result = evaluate_hellaswag(model, rotated(favoured), TOKENIZER, batch_size=3, progress=False)
    assert result == {"acc": 1.0, "acc_norm": 1.0, "examples": 4, "cropped": 0}


@pytest.mark.parametrize("favoured", range(4))
def test_each_ending_token_is_scored_by_the_logits_of_the_token_before_it(favoured):
    chain = TOKENIZER.encode(CONTEXT)[-1:] + ending_tokens(ENDINGS[favoured])
    model = BigramModel(dict(zip(chain, chain[1:])))
    result = evaluate_hellaswag(model, rotated(favoured), TOKENIZER, progress=False)
    assert (result["acc"], result["acc_norm"]) == (1.0, 1.0)


def test_scorer_fails_when_the_model_favours_a_wrong_ending():
    model = RiggedModel({t: 15.0 for t in ending_tokens(ENDINGS[1])})
    examples = [{**example, "label": (example["label"] + 1) % 4} for example in rotated(1)]
    result = evaluate_hellaswag(model, examples, TOKENIZER, progress=False)
    assert result["acc"] == result["acc_norm"] == 0.0


def test_acc_and_acc_norm_differ_when_the_endings_lengths_differ():
    """One short ending a little likely per token, one long ending more likely per token: the sum
    of the long one's losses is larger, its mean smaller."""
    short, long = " yes", " walks away very slowly"
    assert len(TOKENIZER.encode(short)) == 1 and len(TOKENIZER.encode(long)) == 4
    favour = {TOKENIZER.encode(short)[0]: 11.0, **{t: 12.0 for t in TOKENIZER.encode(long)}}
    example = {"ctx": CONTEXT, "endings": [short[1:], long[1:], "holds a Rubik cube", "no"],
               "label": 1}
    model = RiggedModel(favour)
    rows, _ = encode_example(example, TOKENIZER, context_length=64)
    total, mean = ending_losses(model, *pad_rows(rows))
    assert total.argmin() == 0 and mean.argmin() == 1
    result = evaluate_hellaswag(model, [example], TOKENIZER, progress=False)
    assert (result["acc"], result["acc_norm"]) == (0.0, 1.0)


def test_padding_and_batching_do_not_change_any_loss():
    torch.manual_seed(0)
    model = gpt2.GPTModel(TINY).eval()
    example = {"ctx": "The cook", "endings": ["stirs", "puts the lid on the pot and waits",
                                              "sings", "leaves the kitchen"], "label": 0}
    rows, _ = encode_example(example, TOKENIZER, TINY["context_length"])
    together = ending_losses(model, *pad_rows(rows))
    alone = [ending_losses(model, *pad_rows([row])) for row in rows]
    for i, (total, mean) in enumerate(alone):
        torch.testing.assert_close(together[0][i], total[0])
        torch.testing.assert_close(together[1][i], mean[0])


def test_long_examples_are_cropped_from_the_left_and_said_so_once(capsys):
    model = RiggedModel({t: 15.0 for t in ending_tokens(ENDINGS[2])}, context_length=12)
    long_context = "Once upon a time, in a village by the sea, there lived a man who"
    examples = [{**example, "ctx": long_context} for example in rotated(2)]
    result = evaluate_hellaswag(model, examples, TOKENIZER, batch_size=1, progress=False)
    assert result == {"acc": 1.0, "acc_norm": 1.0, "examples": 4, "cropped": 4}
    assert capsys.readouterr().err.count("longer than the model's context (12 tokens)") == 1
    rows, cropped = encode_example(examples[0], TOKENIZER, context_length=12)
    row, n_scored = rows[0]  # examples[0] has ENDINGS[2] first
    whole = TOKENIZER.encode(long_context) + ending_tokens(ENDINGS[2])
    assert cropped and row == whole[-12:] and n_scored == len(ending_tokens(ENDINGS[2]))


def test_evaluation_puts_the_model_back_in_training_mode():
    model = gpt2.GPTModel(TINY).train()
    evaluate_hellaswag(model, rotated(0), TOKENIZER, progress=False)
    assert model.training


@pytest.mark.parametrize("line, fault", [
    ('{"ctx": "x", "endings": ["a", "b"', "not valid JSON"),
    ('["x", ["a", "b", "c", "d"], 0]', "expected a JSON object, got list"),
    ('{"ctx": "x", "endings": ["a", "b", "c", "d"]}', "missing 'label'"),
    ('{"ctx": "x", "endings": ["a", "b", "c"], "label": 0}', "'endings' must be a list of 4"),
    ('{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 4}', "'label' must be an integer"),
])
def test_malformed_line_is_named_with_its_number_and_fault(tmp_path, line, fault):
    path = write_jsonl(tmp_path / "h.jsonl", rotated(0)[:2] + ["", line])
    with pytest.raises(MalformedExampleError, match=f"line 4: {fault}"):
        load_examples(path)


def test_limit_reads_only_the_first_examples(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", rotated(0) + ["not json"])
    assert load_examples(path, limit=2) == rotated(0)[:2]
    with pytest.raises(MalformedExampleError, match="line 5"):
        load_examples(path)

# ---------------------------------------------------------------------------------------------
# The command line, run as a learner runs it
# ---------------------------------------------------------------------------------------------


def run(*args: str, mirror: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GPT2_MIRROR"}
    if mirror is not None:
        env["GPT2_MIRROR"] = mirror
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), TINY)


def test_cli_scores_a_checkpoint_and_prints_both_accuracies(tmp_path, tiny_checkpoint):
    data = write_jsonl(tmp_path / "h.jsonl", rotated(0) + rotated(3))
    result = run("--checkpoint", str(tiny_checkpoint), "--data", str(data), "--limit", "6",
                 "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "6 examples" in result.stdout
    model = gpt2.load_checkpoint(tiny_checkpoint)[0].eval()
    expected = evaluate_hellaswag(model, load_hellaswag(data, 6), progress=False)
    lines = result.stdout.splitlines()
    for key in ("acc", "acc_norm"):  # the script prints what the library computes
        share = next(line for line in lines if line.startswith(key + " ")).split()[1]
        assert share == f"{expected[key]:.1%}".rjust(6).strip()
    assert "random guessing 25.0%" in result.stdout and "29.5% acc_norm" in result.stdout


def test_cli_malformed_line_exits_2_with_the_line_number(tmp_path, tiny_checkpoint):
    data = write_jsonl(tmp_path / "h.jsonl", rotated(0)[:1] + ['{"ctx": "x"}'])
    result = run("--checkpoint", str(tiny_checkpoint), "--data", str(data))
    assert result.returncode == 2
    assert "line 2: missing 'endings', 'label'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_file_without_network_says_where_to_put_it(tmp_path, tiny_checkpoint):
    missing = tmp_path / "hellaswag_val.jsonl"
    result = run("--checkpoint", str(tiny_checkpoint), "--data", str(missing),
                 mirror=str(tmp_path / "empty-mirror"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "rowanz/hellaswag/master/data/hellaswag_val.jsonl" in result.stderr
    assert "GPT2_MIRROR" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.stderr and not missing.exists()


def test_cli_without_openais_weights_names_them_and_the_way_on(tmp_path):
    """The README's command, offline with no weights: one line naming the weights, exit 2."""
    result = run("--model-size", "124M", "--models-dir", str(tmp_path),
                 mirror=str(tmp_path / "empty-mirror"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "OpenAI's GPT-2 124M could not be fetched" in result.stderr
    assert "python 1_PreTraining/pretrain.py" in result.stderr and "Traceback" not in result.stderr
