"""Fine-tune a GPT as an SMS spam classifier (the book's chapter 6) from the shell.

    python 2_FineTuning_Classification/finetune_classifier.py            # OpenAI's 124M, as the book
    python 2_FineTuning_Classification/finetune_classifier.py --init data/course-model/model.pth
    python 2_FineTuning_Classification/finetune_classifier.py --init random --trainable all
    python 2_FineTuning_Classification/finetune_classifier.py --trainable lora --lora-rank 16

It downloads and splits the data (70/10/20, balanced), trains, and writes the classifier to
--out and its metrics to the same name with .json: accuracy on every split and, on the test
set, precision, recall, F1 and the confusion matrix, plus the minutes it took.
The default base model is $GPT2_BASE_MODEL, or else the book's openai-124M. The steps are the
functions of spam.py (and gpt2.py) that 06_classification.ipynb walks through.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import gpt2
import gpt2_fast
import gpt_download
import spam

DEFAULT_OUT = gpt_download.DATA_DIR / "classifier" / "review_classifier.pth"


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--init", default=gpt2.base_model_setting("openai-124M"),
        help="starting weights: openai-124M (or -355M, -774M, -1558M), random (the course "
             "model's shape), or a .pth from gpt2.save_checkpoint such as "
             f"{gpt_download.COURSE_CHECKPOINT.relative_to(gpt_download.ROOT)}")
    add("--trainable", default="last-block", choices=spam.TRAINABLE_CHOICES,
        help="what trains: the last block, final norm and head (as the book); every weight; or "
             "low-rank adapters on every linear layer")
    add("--lora-rank", type=int, default=16, help="rank of the LoRA matrices")
    add("--lora-alpha", type=float, default=16.0, help="scale of the LoRA update")
    add("--epochs", type=int, default=5)
    add("--lr", type=float, default=5e-5, help="AdamW learning rate")
    add("--weight-decay", type=float, default=0.1)
    add("--batch-size", type=int, default=8)
    add("--eval-freq", type=int, default=50, help="steps between loss evaluations")
    add("--eval-iter", type=int, default=5, help="batches per evaluation")
    add("--seed", type=int, default=123, help="seed of the initialisation and shuffling")
    add("--data-dir", type=Path, default=spam.SPAM_DIR, help="where the data and splits go")
    add("--out", type=Path, default=DEFAULT_OUT, help="the saved classifier")
    add("--device", default="auto", help="cpu, cuda, mps or auto")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size", "eval_freq", "eval_iter", "lora_rank"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")


def finetune(args: argparse.Namespace) -> dict:
    """Train the classifier the arguments describe, save it, return its metrics."""
    torch.manual_seed(args.seed)
    device = gpt2.get_device(args.device)
    model = gpt2_fast.accelerate(gpt2.load_base_model(args.init, device))
    paths = spam.prepare_spam_splits(args.data_dir)
    model = spam.prepare_classifier(model, args.trainable, args.lora_rank, args.lora_alpha)
    loaders = spam.spam_dataloaders(paths, gpt2.get_tokenizer(), model.cfg["context_length"],
                                    args.batch_size, args.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=args.lr, weight_decay=args.weight_decay)
    start = time.perf_counter()
    spam.train_classifier_simple(model, loaders["train"], loaders["validation"], optimizer,
                                 device, args.epochs, args.eval_freq, args.eval_iter)
    minutes = (time.perf_counter() - start) / 60
    metrics = {f"{name}_accuracy": spam.calc_accuracy_loader(loader, model, device)
               for name, loader in loaders.items()}
    predictions = spam.predict_loader(loaders["test"], model, device)
    metrics["test"] = spam.classification_metrics(*predictions)
    metrics.update(minutes=round(minutes, 2),
                   trainable_parameters=spam.count_trainable_parameters(model),
                   arguments={key: str(value) for key, value in vars(args).items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    spam.save_classifier(args.out, model, loaders["train"].dataset.max_length)
    args.out.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    gpt2_fast.tune_malloc()  # process-wide allocator setting: this script owns its process
    try:
        metrics = finetune(args)
    except (gpt_download.DownloadError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    test = metrics["test"]
    print(f"test accuracy {test['accuracy']:.2%}, F1 {test['f1']:.3f} "
          f"(train {metrics['train_accuracy']:.2%}, validation {metrics['validation_accuracy']:.2%}) "
          f"in {metrics['minutes']:.1f} min; saved {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
