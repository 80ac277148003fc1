"""Fine-tune a GPT model to follow instructions (the book's chapter 7) and evaluate it.

The steps of 07_instruction_finetuning.ipynb from the shell: load a base model, fine-tune it on
the book's 1,100 Alpaca-style instructions (85% train, 10% test, 5% validation), answer the
test instructions, and score the answers without a judge (ROUGE-L, exact match, the loss on the
reference responses) and, with --judge, with a judge model served by Ollama.

    python finetune_instructions.py                           # OpenAI's GPT-2 355M, as the book
    python finetune_instructions.py --init ../data/course-model/model.pth
    python finetune_instructions.py --init random --format chat --mask-instructions

The base model is --init, by default $GPT2_BASE_MODEL or else the book's openai-355M. Training
is gpt2.train_model_simple, as in the book; the answers are generated as the book does (the
model as trained, greedy, up to 256 new tokens, stopping at <|endoftext|>).

Writes to --out-dir: model.pth, instruction-data-with-response.json, evaluation.csv (one row
per test entry), summary.json (the averages and minutes) and loss.png.
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
import instruct
import ollama_judge



def evaluate(model: gpt2.GPTModel, test_data: list[dict], tokenizer, device,
             prompt_format: str, max_new_tokens: int = 256, dtype: str = "fp32"):
    """Answer every test entry and score the answers: (entries with "model_response", table).

    fp32 answers with the model as trained, as the book does; bf16 and int8 with a faster copy.
    """
    generator = model if dtype == "fp32" else gpt2_fast.for_generation(model, dtype)
    responses = instruct.generate_responses(generator, test_data, tokenizer, max_new_tokens,
                                            prompt_format)
    losses = instruct.response_losses(model, test_data, tokenizer, device, prompt_format)
    with_responses = [{**entry, "model_response": r} for entry, r in zip(test_data, responses)]
    return with_responses, instruct.evaluation_table(test_data, responses, losses)


def summarize(table, history: dict, minutes: float, judge_scores: list[int] | None) -> dict:
    """The run's figures: averages over the test set, final losses, minutes."""
    summary = {
        "test_entries": len(table),
        "rouge_l": round(float(table["rouge_l"].mean()), 4),
        "exact_match": round(float(table["exact_match"].mean()), 4),
        "response_loss": round(float(table["response_loss"].mean()), 4),
        "final_train_loss": round(history["train_loss"][-1], 4),
        "final_val_loss": round(history["val_loss"][-1], 4),
        "minutes": round(minutes, 1),
    }
    if judge_scores:
        summary["judge_score"] = round(sum(judge_scores) / len(judge_scores), 2)
        summary["judged_entries"] = len(judge_scores)
    return summary


def run(args: argparse.Namespace) -> dict:
    """The whole pipeline; returns the summary it also writes to OUT_DIR/summary.json."""
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = gpt2.get_device(args.device)
    torch.manual_seed(args.seed)  # the draw of --init random
    model = gpt2.load_base_model(args.init, device)
    fmt = instruct.get_prompt_format(args.format)
    tokenizer = fmt.tokenizer()
    if args.format == "chat":
        instruct.resize_token_embeddings(model, tokenizer.n_vocab)
    context = model.cfg["context_length"]
    train_data, test_data, val_data = instruct.load_instruction_data(tokenizer, context,
                                                                     args.format)
    if args.quick:
        args.train_entries, args.test_entries, args.val_entries = 40, 3, 8
    train_data, test_data = train_data[:args.train_entries], test_data[:args.test_entries]
    val_data = val_data[:args.val_entries]
    print(f"{len(train_data)} training, {len(val_data)} validation, {len(test_data)} test "
          f"entries; {gpt2.count_parameters(model):,} parameters, from {args.init}")

    torch.manual_seed(args.seed)
    loader_args = dict(prompt_format=args.format, mask_instructions=args.mask_instructions,
                       allowed_max_length=context, device=device)
    train_loader = instruct.create_instruction_dataloader(train_data, tokenizer, args.batch_size,
                                                          **loader_args)
    val_loader = instruct.create_instruction_dataloader(val_data, tokenizer, args.batch_size,
                                                        shuffle=False, drop_last=False,
                                                        **loader_args)
    gpt2_fast.accelerate(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    train_losses, val_losses, tokens_seen = gpt2.train_model_simple(
        model, train_loader, val_loader, optimizer, device, args.epochs, args.eval_freq,
        eval_iter=5, start_context=fmt.prompt(val_data[0]), tokenizer=tokenizer, progress=True)
    history = {"epoch": torch.linspace(0, args.epochs, len(train_losses)).tolist(),
               "tokens_seen": tokens_seen, "train_loss": train_losses, "val_loss": val_losses}
    train_minutes = (time.perf_counter() - start) / 60

    with_responses, table = evaluate(model, test_data, tokenizer, device, args.format,
                                     args.max_new_tokens, args.dtype)
    judge_scores = None
    if args.judge and ollama_judge.check_if_running(args.judge, args.ollama_url):
        judge_scores, skipped = ollama_judge.generate_model_scores(
            with_responses, model=args.judge, url=args.ollama_url)
        for line in skipped:
            print(f"judge skipped {line}", file=sys.stderr)
    summary = summarize(table, history, (time.perf_counter() - start) / 60, judge_scores)
    summary.update(init=args.init, format=args.format, train_entries=len(train_data),
                   val_entries=len(val_data), epochs=args.epochs, lr=args.lr,
                   mask_instructions=args.mask_instructions, generation_dtype=args.dtype,
                   train_minutes=round(train_minutes, 1))
    write_outputs(args.out_dir, model, with_responses, table, history, summary)
    return summary


def write_outputs(out_dir: Path, model, with_responses, table, history, summary) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    gpt2.save_checkpoint(out_dir / "model.pth", model)
    (out_dir / "instruction-data-with-response.json").write_text(
        json.dumps(with_responses, indent=4), encoding="utf-8")
    table.to_csv(out_dir / "evaluation.csv", index=False)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    fig = gpt2.plot_losses(history["epoch"], history["tokens_seen"], history["train_loss"],
                           history["val_loss"])
    fig.savefig(out_dir / "loss.png", dpi=120)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--init", default=gpt2.base_model_setting(instruct.BOOK_BASE_MODEL),
                   help="openai-355M (the book's), openai-124M (for small machines), a .pth "
                        f"checkpoint such as {gpt_download.COURSE_CHECKPOINT}, or random")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mask-instructions", action="store_true",
                   help="count only the response tokens in the loss")
    p.add_argument("--format", choices=instruct.PROMPT_FORMATS, default="alpaca",
                   help="prompt style: the book's Alpaca, or chat turns with <|im_start|> and "
                        "<|im_end|> (the model grows two token rows)")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--eval-freq", type=int, default=25, help="steps between loss evaluations")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="longest answer generated, as in the book (the longest reference answer "
                        "has 56 tokens)")
    p.add_argument("--judge", metavar="MODEL",
                   help="also score the answers with this Ollama model, e.g. llama3")
    p.add_argument("--ollama-url", default=ollama_judge.DEFAULT_URL)
    p.add_argument("--dtype", choices=gpt2_fast.GENERATION_DTYPES, default="fp32",
                   help="number format the answers are generated in: fp32 is the model as "
                        "trained, as in the book; int8 is ~3x faster on a CPU")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch (default: its own choice); on a busy shared "
                        "machine 1 can be several times faster than 2")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the outputs go (default: runs/<init or checkpoint folder>-<format> "
                        "beside this script)")
    p.add_argument("--train-entries", type=int, default=None,
                   help="use only the first N training entries (default: all 935)")
    p.add_argument("--val-entries", type=int, default=None,
                   help="use only the first N validation entries (default: all 55)")
    p.add_argument("--test-entries", type=int, default=None,
                   help="answer and score only the first N test entries (default: all 110)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 40 training, 8 validation and 3 test entries")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch_size, args.eval_freq, args.max_new_tokens) < 1 or args.lr <= 0:
        parser.error("--epochs, --batch-size, --eval-freq and --max-new-tokens must be at least "
                     "1, --lr above 0")
    if any(n is not None and n < 1 for n in (args.train_entries, args.val_entries,
                                             args.test_entries)):
        parser.error("--train-entries, --val-entries and --test-entries must be at least 1")
    if args.out_dir is None:
        args.out_dir = instruct.run_dir(args.init, args.format)
    gpt2_fast.tune_malloc()  # process-wide allocator setting: this script owns its process
    try:
        summary = run(args)
    except (gpt_download.DownloadError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    print(f"outputs in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
