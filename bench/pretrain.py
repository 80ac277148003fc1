"""What pretrain.py's loop costs beyond bench/train.py's bare step, per step, over whole runs.

Both sides train the same model (GPT-2 124M's shape, tied head, dropout 0.1, context 256) on
batches of 4 windows in fp32 with the speed module's layers. The reference is bench/train.py's
step: random tokens already in memory, forward, backward, fused AdamW. The other side is
pretrain.py's own loop (`pretrain.train_loop`) for a whole short run on tiny Shakespeare:
windows read from the memory-mapped shards, the learning-rate schedule, gradient clipping, the
loss and gradient norm fetched for the log, the JSON log and progress bar, the checkpoint
(model, optimizer, data position, RNG states) and the final model file, with --eval-every equal
to --steps as in a run that evaluates every few hundred steps. That one evaluation is cut to
one validation batch and one sampled token: it is extra work a learner asks for, not overhead.
The two take turns (a run, then as many reference steps, ...), each run in a fresh folder.
The issue's target: at most 3% more time per step than the reference.

    python bench/pretrain.py               # 3 runs of 50 steps each side, ~25 min on 2 cores
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

TARGETS = {"pretrain_step_vs_bench_step": -1.03}


def pretrain_args(steps: int, quick: bool, out_dir: str) -> argparse.Namespace:
    size = ["--n-layer", "2", "--n-head", "4", "--emb-dim", "64"] if quick else ["--model-size", "124M"]
    return pretrain.build_arg_parser().parse_args(
        [*size, "--context", "64" if quick else "256", "--batch-size", "4", "--dtype", "fp32",
         "--device", "cpu", "--steps", str(steps), "--warmup", str(steps // 5),
         "--eval-every", str(steps), "--eval-batches", "1", "--sample-tokens", "1",
         "--out-dir", out_dir])


def time_pretrain_run(steps: int, quick: bool) -> float:
    """Seconds per step of one pretrain.py run (its loop only: setup is not timed)."""
    with tempfile.TemporaryDirectory() as out_dir:
        args = pretrain_args(steps, quick, out_dir)
        trainer, step, position, log_path = pretrain.prepare_training(args)
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines; stdout is for figures
            pretrain.train_loop(trainer, args, step, position, log_path)
        return (time.perf_counter() - start) / steps


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="steps per run of each side")
    args = parser.parse_args()
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be at least 2 and --repeats at least 1")
    steps = 4 if args.quick else args.steps
    setup(args)
    gpt2_fast.tune_malloc()  # pretrain.py's process-wide allocator setting, for both sides

    time_pretrain_run(2, args.quick)  # warm-up: tokenised shards, first-call costs
    cfg = pretrain.model_config(pretrain_args(steps, args.quick, ""))  # the model both sides train
    model = gpt2_fast.accelerate(random_gpt(cfg)).train()
    optimizer = make_optimizer(model)
    batch = tuple(torch.randint(0, cfg["vocab_size"], (4, cfg["context_length"])) for _ in range(2))
    train_step(model, optimizer, ours_logits, batch)  # warm-up

    run_times, step_times = [], []
    for _ in range(args.repeats):
        run_times.append(time_pretrain_run(steps, args.quick))
        start = time.perf_counter()
        for _ in range(steps):
            train_step(model, optimizer, ours_logits, batch)
        step_times.append((time.perf_counter() - start) / steps)
    emit("pretrain_run_seconds_per_step", median=statistics.median(run_times), runs=run_times,
         steps_per_run=steps)
    emit("bench_train_step_seconds", median=statistics.median(step_times), runs=step_times)
    emit_ratios({"pretrain_step_vs_bench_step": paired_speedup(step_times, run_times)}, TARGETS)


if __name__ == "__main__":
    main()
