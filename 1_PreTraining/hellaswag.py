"""HellaSwag: does a language model pick the sensible ending of an everyday scene?

Each of HellaSwag's 10,042 validation examples is a context (a sentence or two from a video
caption or a WikiHow article) and four endings: the real one and three that a model wrote and
that were kept because they fooled the models of 2019. People get 95% right. A language model
answers by picking the ending it finds least surprising, i.e. whose tokens have the lowest
cross-entropy given the context. Summed over the ending's tokens (`acc`) that favours short
endings; averaged per token (`acc_norm`) it does not. Reproductions of GPT-2 quote `acc_norm`.

Shell use:  python hellaswag.py --model-size 124M [--limit 500]
            python hellaswag.py --checkpoint ../data/course-model/model.pth
Exit status: 0 done, 1 a download failed, 2 bad input (arguments, data file, checkpoint).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import gpt2
import gpt_download
from gpt_download import DATA_DIR, DEFAULT_MODELS_DIR, DownloadError

HELLASWAG_FILE = "hellaswag_val.jsonl"
DEFAULT_DATA_PATH = DATA_DIR / HELLASWAG_FILE
N_ENDINGS = 4
RANDOM_ACCURACY = 0.25
GPT2_124M_ACC_NORM = 0.295  # as reproductions of GPT-2 124M (e.g. Karpathy's build-nanogpt) report it

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class MalformedExampleError(ValueError):
    """A line of a HellaSwag file that is no example; the message names the line and the fault."""


def fetch_hellaswag(path: str | Path = DEFAULT_DATA_PATH) -> Path:
    """HellaSwag's validation set at `path`, downloaded there first if it is missing."""
    url, sha256 = gpt_download.DATA_FILES[HELLASWAG_FILE]
    return gpt_download.download_file(url, path, sha256=sha256)


def parse_example(line: str) -> dict:
    """One jsonl line as {"ctx": str, "endings": [4 str], "label": int}.

    Raises ValueError saying what is wrong: the file has other fields too, but these three are
    all the scorer reads, so they are all it checks.
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [key for key in ("ctx", "endings", "label") if key not in record]
    if missing:
        raise ValueError(f"missing {', '.join(repr(key) for key in missing)}")
    ctx, endings, label = record["ctx"], record["endings"], record["label"]
    if not isinstance(ctx, str):
        raise ValueError(f"'ctx' must be a string, got {type(ctx).__name__}")
    if not (isinstance(endings, list) and len(endings) == N_ENDINGS
            and all(isinstance(ending, str) for ending in endings)):
        raise ValueError(f"'endings' must be a list of {N_ENDINGS} strings, got {endings!r:.80}")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < N_ENDINGS:
        raise ValueError(f"'label' must be an integer from 0 to {N_ENDINGS - 1}, got {label!r}")
    return {"ctx": ctx, "endings": endings, "label": label}


def load_examples(path: str | Path, limit: int | None = None) -> list[dict]:
    """The first `limit` examples (all by default) of a HellaSwag jsonl file; blank lines skipped."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            try:
                examples.append(parse_example(line))
            except ValueError as err:
                raise MalformedExampleError(
                    f"{path}, line {number}: {err}. Each line must be one HellaSwag example "
                    "with 'ctx', 'endings' and 'label'; fix or delete that line, or delete the "
                    "file to download it again.") from None
    return examples


def load_hellaswag(path: str | Path = DEFAULT_DATA_PATH, limit: int | None = None) -> list[dict]:
    """HellaSwag's validation examples (the first `limit` of them), downloaded if needed."""
    return load_examples(fetch_hellaswag(path), limit)

# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def encode_example(example: dict, tokenizer: tiktoken.Encoding, context_length: int
                   ) -> tuple[list[tuple[list[int], int]], bool]:
    """The four rows context + ending as token ids, each with how many of its last tokens to
    score, and whether any row had to be cropped.

    An ending continues the context after a space, as in running text. A row longer than the
    model's context loses tokens from the left (the start of the context), so the ending, which
    is what gets scored, stays whole when it can.
    """
    context = tokenizer.encode(example["ctx"])
    rows, cropped = [], False
    for ending in example["endings"]:
        ending_ids = tokenizer.encode(" " + ending)
        row = (context + ending_ids)[-context_length:]
        cropped |= len(context) + len(ending_ids) > context_length
        # the first token of a row has nothing before it to predict it
        rows.append((row, min(len(ending_ids), len(row) - 1)))
    return rows, cropped


def pad_rows(rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded on the right into one (n, t) tensor of ids, and a mask of the tokens to score.

    Right padding changes nothing before it (attention is causal) and the mask leaves it out.
    """
    width = max(len(row) for row, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    scored = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (row, n_scored) in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        scored[i, len(row) - n_scored:len(row)] = True
    return ids, scored


@torch.no_grad()
def ending_losses(model: nn.Module, ids: torch.Tensor, scored: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's cross-entropy over its scored tokens: summed, and averaged per token.

    The logits at position i predict token i + 1, hence the shift by one.
    """
    logits = model(ids)[:, :-1].float()
    targets, mask = ids[:, 1:], scored[:, 1:]
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    total = (losses.view_as(targets) * mask).sum(dim=1)
    return total, total / mask.sum(dim=1)


def evaluate_hellaswag(model: nn.Module, examples: list[dict],
                       tokenizer: tiktoken.Encoding | None = None, batch_size: int = 4,
                       progress: bool = True) -> dict:
    """Score `model` on HellaSwag `examples` (from `load_hellaswag`).

    Returns {"acc", "acc_norm", "examples", "cropped"}: the share of examples whose right ending
    has the lowest summed, and the lowest per-token, loss; how many examples were scored; how
    many had to be cropped to the model's context. `batch_size` examples (4 rows each) go through
    the model at once. The model runs in eval mode and is put back in the mode it was in, so a
    training loop can call this between steps.
    """
    if not examples:
        raise ValueError("no HellaSwag examples to score")
    tokenizer = tokenizer or gpt2.get_tokenizer()
    context_length = model.cfg["context_length"]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = correct_norm = cropped = 0
    with tqdm(total=len(examples), desc="HellaSwag", unit="example", disable=not progress) as bar:
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            rows = []
            for example in batch:
                example_rows, was_cropped = encode_example(example, tokenizer, context_length)
                rows += example_rows
                if was_cropped and not cropped:
                    tqdm.write(f"Note: some examples are longer than the model's context "
                               f"({context_length} tokens); they lose tokens from the start of "
                               "the context.", file=sys.stderr)
                cropped += was_cropped
            ids, scored = pad_rows(rows)
            total, mean = ending_losses(model, ids.to(device), scored.to(device))
            labels = torch.tensor([example["label"] for example in batch], device=device)
            correct += (total.view(-1, N_ENDINGS).argmin(dim=1) == labels).sum().item()
            correct_norm += (mean.view(-1, N_ENDINGS).argmin(dim=1) == labels).sum().item()
            bar.update(len(batch))
            bar.set_postfix(acc_norm=f"{correct_norm / (start + len(batch)):.3f}")
    model.train(was_training)
    n = len(examples)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "examples": n, "cropped": cropped}


def format_report(result: dict) -> str:
    """Both accuracies, how uncertain they are, and the reference points to read them against."""
    n = result["examples"]
    lines = []
    for key, how in (("acc", "lowest total loss over the ending's tokens"),
                     ("acc_norm", "lowest loss per ending token")):
        share = result[key]
        error = math.sqrt(share * (1 - share) / n)  # one standard error of a share of n
        lines.append(f"{key:<9}{share:6.1%} +- {100 * error:.1f} points  ({how})")
    lines.append(f"reference: random guessing {RANDOM_ACCURACY:.1%}; OpenAI's GPT-2 124M about "
                 f"{GPT2_124M_ACC_NORM:.1%} acc_norm (as reproductions of it report)")
    return "\n".join(lines)

# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Score a GPT-2 on HellaSwag's validation set (10,042 examples).",
        epilog="Exit status 2: bad input or a failed download, with one line saying what to do. "
               "Without web access, set GPT2_MIRROR to a folder laid out as HOST/PATH, or put "
               "the file at --data.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=Path,
                       help="a .pth saved by gpt2.save_checkpoint; used instead of --model-size")
    which.add_argument("--model-size", default="124M", choices=gpt2.MODEL_CONFIGS,
                       help="which OpenAI GPT-2 to score (default: %(default)s)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
                        help="where OpenAI's checkpoints are kept (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_PATH,
                        help="HellaSwag's jsonl file, downloaded there if missing "
                             "(default: %(default)s)")
    parser.add_argument("--limit", type=positive_int,
                        help="score only the first N examples (default: all)")
    parser.add_argument("--batch-size", type=positive_int, default=4,
                        help="examples per forward pass, 4 rows each; lower it if memory runs "
                             "short (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, mps, or auto: cuda, then mps, then cpu (default: %(default)s)")
    return parser


def run_cli(args: argparse.Namespace) -> None:
    device = gpt2.get_device(args.device)
    model = gpt2.load_model(checkpoint=args.checkpoint, model_size=args.model_size,
                            models_dir=args.models_dir, device=device)
    examples = load_hellaswag(args.data, args.limit)
    name = args.checkpoint or f"OpenAI's GPT-2 {args.model_size}"
    print(f"HellaSwag validation, {len(examples):,} examples: {name} on {device}")
    print(format_report(evaluate_hellaswag(model, examples, batch_size=args.batch_size)))


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        run_cli(args)
    except (DownloadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
