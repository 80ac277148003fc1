"""Classify SMS messages as spam or not with a classifier made by finetune_classifier.py.

    python 2_FineTuning_Classification/classify.py --model data/classifier/review_classifier.pth \\
        "You are a winner! Claim your free prize now"
    python 2_FineTuning_Classification/classify.py --model CLASSIFIER.pth < messages.txt

Prints one line per message: the label, the probability the classifier gives that label, and
the message. Without messages on the command line it reads one per line from standard input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gpt2
import spam
from finetune_classifier import DEFAULT_OUT


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("messages", nargs="*",
                        help="messages to classify (default: one per line from standard input)")
    parser.add_argument("--model", type=Path, default=DEFAULT_OUT,
                        help="a classifier saved by finetune_classifier.py (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    return parser


def read_messages(args: argparse.Namespace) -> list[str]:
    """The messages given, or the non-blank lines of standard input."""
    if args.messages:
        return args.messages
    messages = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not messages:
        raise ValueError("no messages: give them as arguments or one per line on standard input")
    return messages


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        device = gpt2.get_device(args.device)
        model, max_length = spam.load_classifier(args.model, device)
        tokenizer = gpt2.get_tokenizer()
        for message in read_messages(args):
            probability = spam.spam_probability(message, model, tokenizer, device, max_length)
            label = int(probability > 0.5)
            print(f"{spam.CLASS_NAMES[label]}\t{max(probability, 1 - probability):.3f}\t{message}")
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
