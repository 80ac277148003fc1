"""Preference-tune a chapter-7 model with DPO (chapter 7b) and measure what it changed.

    python 3_FineTuning_Instructions/preference_tune.py    # the model finetune_instructions.py made
    python 3_FineTuning_Instructions/preference_tune.py --policy runs/course-model-alpaca/model.pth

The policy starts as a copy of the fine-tuned model, which stays frozen as the reference. The
data: the book's instructions with a chosen and a rejected response each, split as in chapter 7
(85% train, 5% validation, 10% test, in the file's order, so the test pairs are ones the
chapter-7 model never trained on). Writes to --out: model.pth, and metrics.json with the test
set's preference accuracy and reward margin, ROUGE-L of the generated answers against the
chosen and the rejected responses, and answer lengths, before and after, plus the minutes.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from statistics import mean

import torch

import dpo
import gpt2
import gpt_download
import instruct

HERE = Path(__file__).resolve().parent
MAKE_POLICY = f"python {HERE.name}/finetune_instructions.py"


def default_policy() -> Path:
    """Where finetune_instructions.py writes its model for the current GPT2_BASE_MODEL."""
    return instruct.run_dir(gpt2.base_model_setting(instruct.BOOK_BASE_MODEL)) / "model.pth"


def load_policy(path: Path, device: torch.device) -> gpt2.GPTModel:
    """The chapter-7 model, or one line naming the command that makes it."""
    if not path.is_file():
        raise FileNotFoundError(f"no fine-tuned model at {path}: make one with {MAKE_POLICY} "
                                "(or give --policy)")
    try:
        return gpt2.load_checkpoint(path, device)[0]
    except ValueError as err:
        raise ValueError(f"{err}; --policy takes the model.pth that {MAKE_POLICY} writes") from None


def answer_scores(model: gpt2.GPTModel, test_data: list[dict], tokenizer,
                  max_new_tokens: int) -> dict[str, float]:
    """Generate an answer to every test entry; mean ROUGE-L against the chosen and the rejected
    response, and mean length in words."""
    answers = instruct.generate_responses(model, test_data, tokenizer, max_new_tokens)
    return {"rouge_l_chosen": mean([instruct.rouge_l(a, e["chosen"])
                                    for a, e in zip(answers, test_data)]),
            "rouge_l_rejected": mean([instruct.rouge_l(a, e["rejected"])
                                      for a, e in zip(answers, test_data)]),
            "answer_words": mean([len(a.split()) for a in answers]),
            "answers": answers}


@torch.no_grad()
def likelihood_accuracy(model: gpt2.GPTModel, loader) -> float:
    """The share of test pairs whose chosen response the model finds likelier (per token)
    than the rejected one: meaningful before training too, when every reward is still zero."""
    model.eval()
    right = [torch.gt(*dpo.batch_logprobs(model, batch)) for batch in loader]
    return torch.cat(right).float().mean().item()


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    device = gpt2.get_device(args.device)
    reference = load_policy(args.policy, device).eval()
    policy = copy.deepcopy(reference)
    tokenizer = gpt2.get_tokenizer()
    train_data, test_data, val_data = instruct.split_instruction_data(dpo.load_preference_data())
    if args.quick:
        train_data, val_data, test_data = train_data[:16], val_data[:8], test_data[:4]
    context = reference.cfg["context_length"]
    torch.manual_seed(args.seed)
    loaders = {name: dpo.create_preference_dataloader(data, tokenizer, args.batch_size,
                                                      shuffle=name == "train",
                                                      allowed_max_length=context, device=device)
               for name, data in (("train", train_data), ("val", val_data), ("test", test_data))}
    before = {"likelihood_accuracy": likelihood_accuracy(reference, loaders["test"]),
              **answer_scores(reference, test_data, tokenizer, args.max_new_tokens)}
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.01)
    history = dpo.train_model_dpo_simple(policy, reference, loaders["train"], loaders["val"],
                                         optimizer, args.epochs, args.beta, args.eval_freq,
                                         eval_iter=5)
    test = dpo.evaluate_dpo_loader(loaders["test"], policy, reference, args.beta)
    after = {"likelihood_accuracy": likelihood_accuracy(policy, loaders["test"]),
             "reward_accuracy": test["accuracy"], "reward_margin": test["margin"],
             **answer_scores(policy, test_data, tokenizer, args.max_new_tokens)}
    args.out.mkdir(parents=True, exist_ok=True)
    gpt2.save_checkpoint(args.out / "model.pth", policy)
    metrics = {"policy": str(args.policy), "beta": args.beta, "lr": args.lr, "epochs": args.epochs,
               "train_pairs": len(train_data), "test_pairs": len(test_data),
               "before": before, "after": after, "history": history,
               "minutes": round((time.perf_counter() - start) / 60, 1)}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--policy", type=Path, default=default_policy(),
                   help=f"a chapter-7 fine-tuned model.pth ({MAKE_POLICY} writes it)")
    p.add_argument("--beta", type=float, default=0.1,
                   help="how far the policy may move from the reference (smaller: further)")
    p.add_argument("--lr", type=float, default=5e-6, help="AdamW learning rate")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-freq", type=int, default=5, help="steps between evaluations")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest generated answer")
    p.add_argument("--seed", type=int, default=123, help="seed of the training order")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: runs/<policy's folder>-dpo beside this script)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    p.add_argument("--quick", action="store_true", help="a smoke run: 16 training pairs, 4 test")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch_size, args.eval_freq, args.max_new_tokens) < 1:
        parser.error("--epochs, --batch-size, --eval-freq and --max-new-tokens must be at least 1")
    if args.beta <= 0 or args.lr <= 0:
        parser.error(f"--beta and --lr must be above 0, got {args.beta} and {args.lr}")
    if args.out is None:
        args.out = HERE / "runs" / f"{args.policy.parent.name}-dpo"
    try:
        metrics = run(args)
    except (gpt_download.DownloadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    before, after = metrics["before"], metrics["after"]
    print(f"test pairs: chosen likelier than rejected {before['likelihood_accuracy']:.1%} -> "
          f"{after['likelihood_accuracy']:.1%}; reward accuracy {after['reward_accuracy']:.1%}, "
          f"margin {after['reward_margin']:.3f}")
    print(f"ROUGE-L against chosen {before['rouge_l_chosen']:.3f} -> "
          f"{after['rouge_l_chosen']:.3f}, "
          f"against rejected {before['rouge_l_rejected']:.3f} -> {after['rouge_l_rejected']:.3f}; "
          f"answers {before['answer_words']:.1f} -> {after['answer_words']:.1f} words; "
          f"{metrics['minutes']} min; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
