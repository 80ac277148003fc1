"""What pretrain.py's loop costs beyond bench/train.py's bare step, per step, over whole runs.

Both sides train the same model (GPT-2 124M's shape, tied head, dropout 0.1, context 256) on
batches of 4 windows in fp32 with the speed module's layers, in a process with pretrain.py's
settings (glibc's allocator thresholds, subnormals read as zero). The reference is bench/train.py's
step: random tokens already in memory, forward, backward, fused AdamW. The other side is
pretrain.py's own loop (`pretrain.train_loop`) for a whole run of 100 steps on tiny
Shakespeare at the script's default cadence (--eval-every 100): windows read from the
memory-mapped shards, the learning-rate schedule, the gradient norm and clipping, the loss and
norm fetched for the log, the JSON log and progress bar, one checkpoint (model, optimizer,
data position, RNG states), the final model file and the loss plot. The evaluation at the
checkpoint (validation loss and a greedy sample, here cut to one batch and one token) is
forward passes a learner asks for, not overhead: its seconds, which the log records, are
taken out of the first ratio and left in the second.
The two take turns, each run in a fresh folder between two blocks of half as many reference
steps, so that a machine that speeds up or slows down over minutes tilts neither side.
The issue's target: at most 3% more time per step than the reference.

    python bench/pretrain.py               # 3 runs of 100 steps each side, ~45 min on 2 cores
    python bench/pretrain.py --quick       # seconds, tiny model
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time

import torch

from _common import ROOT, base_parser, emit, emit_ratios, paired_speedup, random_gpt, setup
from train import make_optimizer, ours_logits, train_step

import gpt2_fast

sys.path.insert(0, str(ROOT / "1_PreTraining"))
import pretrain  # noqa: E402

TARGETS = {"pretrain_step_vs_bench_step": -1.03}  # the other ratio is reported only


def pretrain_args(steps: int, quick: bool, out_dir: str) -> argparse.Namespace:
    size = ["--n-layer", "2", "--n-head", "4", "--emb-dim", "64"] if quick else ["--model-size", "124M"]
    return pretrain.build_arg_parser().parse_args(
        [*size, "--context", "64" if quick else "256", "--batch-size", "4", "--dtype", "fp32",
         "--device", "cpu", "--steps", str(steps), "--warmup", str(steps // 5),
         "--eval-every", str(steps), "--eval-batches", "1", "--sample-tokens", "1",
         "--out-dir", out_dir])


def time_pretrain_run(steps: int, quick: bool) -> tuple[float, float, float]:
    """Seconds per step of one pretrain.py run (its loop only: setup is not timed): without
    the evaluation's time, with it, and the steps alone (`Trainer.step` as the log times it,
    so the rest of the first figure is checkpoints, logging, the final model and plot)."""
    with tempfile.TemporaryDirectory() as out_dir:
        args = pretrain_args(steps, quick, out_dir)
        trainer, step, position, log_path = pretrain.prepare_training(args)
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines; stdout is for figures
            pretrain.train_loop(trainer, args, step, position, log_path)
        seconds = time.perf_counter() - start
        records = pretrain.read_log(log_path)
        evaluation = sum(record.get("eval_seconds", 0.0) for record in records)
        tokens_per_step = args.batch_size * args.context
        in_steps = sum(tokens_per_step / record["tokens_per_s"] for record in records)
        return (seconds - evaluation) / steps, seconds / steps, in_steps / steps


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100,
                        help="steps per run of each side; a run evaluates and checkpoints once")
    args = parser.parse_args()
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be at least 2 and --repeats at least 1")
    steps = 4 if args.quick else args.steps
    gpt2_fast.flush_subnormals()  # pretrain.py's process-wide settings, for both sides; this
    gpt2_fast.tune_malloc()       # one before torch starts its threads (they copy it)
    setup(args)

    time_pretrain_run(2, args.quick)  # warm-up: tokenised shards, first-call costs
    cfg = pretrain.model_config(pretrain_args(steps, args.quick, ""))  # the model both sides train
    model = gpt2_fast.accelerate(random_gpt(cfg)).train()
    optimizer = make_optimizer(model)
    batch = tuple(torch.randint(0, cfg["vocab_size"], (4, cfg["context_length"])) for _ in range(2))
    train_step(model, optimizer, ours_logits, batch)  # warm-up

    def reference_seconds(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            train_step(model, optimizer, ours_logits, batch)
        return time.perf_counter() - start

    run_times, with_evaluation, in_steps, step_times = [], [], [], []
    for _ in range(args.repeats):  # reference steps on both sides of each run: drift cancels
        before = reference_seconds(steps // 2)
        run, whole, steps_alone = time_pretrain_run(steps, args.quick)
        step_times.append((before + reference_seconds(steps - steps // 2)) / steps)
        run_times.append(run)
        with_evaluation.append(whole)
        in_steps.append(steps_alone)
    emit("pretrain_run_seconds_per_step", median=statistics.median(run_times), runs=run_times,
         with_evaluation=with_evaluation, steps_alone=in_steps, steps_per_run=steps)
    emit("bench_train_step_seconds", median=statistics.median(step_times), runs=step_times)
    emit_ratios({"pretrain_step_vs_bench_step": paired_speedup(step_times, run_times),
                 "pretrain_step_with_evaluation_vs_bench_step":
                     paired_speedup(step_times, with_evaluation),
                 "trainer_step_alone_vs_bench_step": paired_speedup(step_times, in_steps)},
                TARGETS)


if __name__ == "__main__":
    main()
