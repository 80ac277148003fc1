"""Pretrain a GPT on any corpus, in one process or many (torchrun), and keep the checkpoint.

With no arguments it makes the course's own pretrained model: a 6-layer, 384-wide GPT trained
on tiny Shakespeare, written to data/course-model/model.pth (gpt_download.COURSE_CHECKPOINT).

    python 1_PreTraining/pretrain.py                                   # the course model
    python 1_PreTraining/pretrain.py --dataset my_texts/ --steps 5000  # your own corpus
    python 1_PreTraining/pretrain.py --resume                          # continue a cut run
    python 1_PreTraining/pretrain.py --init-from openai-124M --dataset my_texts/  # GPT-2, your text
    python 1_PreTraining/pretrain.py --recipe tinystories --device cuda  # GPT-2 124M on TinyStories
    torchrun --nproc-per-node 2 1_PreTraining/pretrain.py              # data parallel
    python gpt2.py --checkpoint data/course-model/model.pth --prompt "ROMEO:"

How the data is read: the training tokens are cut into windows of context + 1 tokens at a
stride of `context` (never across a shard boundary), and each epoch visits them in an order
shuffled with (seed, epoch). A step takes `accum` micro-batches of `batch_size` windows on
each of `world` processes; rank r's micro-step m reads the `batch_size` windows starting at
position base + (m * world + r) * batch_size of that order. So one process accumulating two
micro-batches sees exactly the data two processes see with one each, and (epoch, position) is
all a checkpoint needs to continue where it stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import gpt2
import gpt2_fast
import gpt_download
import hellaswag
import token_shards

DEFAULT_OUT_DIR = gpt_download.COURSE_CHECKPOINT.parent
# Dense bf16 tensor-core peaks (FLOP/s) by a name that appears in torch.cuda.get_device_name.
GPU_BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12,
                       "L4": 121e12, "A10": 125e12}


class UsageError(ValueError):
    """A bad command line or input: reported as one line on stderr, exit status 2."""

# ---------------------------------------------------------------------------------------------
# The process
# ---------------------------------------------------------------------------------------------


@dataclass
class Dist:
    """Where this process stands among the processes torchrun started (1 of 1 without it)."""
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_process(device_name: str) -> Dist:
    """Join the process group when started by torchrun (RANK/WORLD_SIZE set), else run alone."""
    try:
        device = gpt2.get_device(device_name)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if "RANK" not in os.environ:
        return Dist(0, 1, device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, device)


def setup_cuda() -> None:
    """TF32 for the fp32 matmuls that remain under autocast (and for --dtype fp32)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """bf16 for "bf16"; for "auto", bf16 on a GPU that has it and, on a CPU, whichever of bf16
    and fp32 multiplies faster here, measured and printed; None means plain fp32."""
    if name == "auto" and device.type == "cpu":
        name, rates = gpt2_fast.pick_training_dtype(device)
        print(f"--dtype auto: {name} (a training-shaped matmul here: fp32 {rates['fp32']:.0f}, "
              f"bf16 {rates['bf16']:.0f} GFLOP/s)", file=sys.stderr)
    elif name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return torch.bfloat16 if name == "bf16" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class TokenWindows:
    """Windows of context + 1 tokens at a stride of `context` over memory-mapped shards."""

    def __init__(self, shards: list[np.ndarray], context: int):
        self.shards, self.context = shards, context
        counts = [max(0, (len(shard) - 1) // context) for shard in shards]
        self.starts = np.cumsum([0] + counts)  # index of each shard's first window

    def __len__(self) -> int:
        return int(self.starts[-1])

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (len(indices), context): targets are inputs shifted by one."""
        shard_of = np.searchsorted(self.starts, indices, side="right") - 1
        rows = [self.shards[s][(i - self.starts[s]) * self.context:][:self.context + 1]
                for i, s in zip(indices, shard_of)]
        windows = torch.from_numpy(np.stack(rows).astype(np.int64))
        return windows[:, :-1], windows[:, 1:]


@functools.lru_cache(maxsize=1)
def epoch_order(n_windows: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which an epoch visits the windows: the same for every rank and every run.
    Kept between calls (read-only): shuffling FineWeb-Edu's ten million windows takes ~0.6 s,
    and every step of the epoch asks for the same order."""
    order = np.random.default_rng([seed, epoch]).permutation(n_windows)
    order.flags.writeable = False
    return order


@dataclass
class DataPosition:
    """Where the next step starts: an epoch and an index into that epoch's order."""
    epoch: int = 0
    index: int = 0

    def claim(self, windows_per_step: int, n_windows: int) -> tuple[int, int]:
        """(epoch, index) for the next step's windows, moving past them; a step that would
        run over the end of an epoch starts the next one instead."""
        if self.index + windows_per_step > n_windows:
            self.epoch, self.index = self.epoch + 1, 0
        start = (self.epoch, self.index)
        self.index += windows_per_step
        return start

# ---------------------------------------------------------------------------------------------
# Model and optimizer
# ---------------------------------------------------------------------------------------------


def model_config(args: argparse.Namespace, init: gpt2.GPTModel | None = None) -> dict:
    """The GPTModel config the flags ask for: the shape of the `init` weights, a named GPT-2
    size or the layer flags."""
    if init is not None:
        return {**init.cfg, "drop_rate": args.dropout}
    if args.model_size:
        base = gpt2.gpt2_config(args.model_size)
    else:
        base = {**gpt2.GPT_CONFIG_124M, "n_layers": args.n_layer, "n_heads": args.n_head,
                "emb_dim": args.emb_dim}
    return {**base, "context_length": args.context, "drop_rate": args.dropout}


def initial_weights(args: argparse.Namespace) -> gpt2.GPTModel | None:
    """The model --init-from names (None without it), refused (UsageError) when a shape flag
    given on the command line contradicts it or its context is shorter than --context."""
    if args.init_from is None:
        return None
    try:
        model = gpt2.load_base_model(args.init_from)
    except (gpt2.DownloadError, FileNotFoundError, ValueError) as err:
        raise UsageError(f"--init-from: {err}") from None
    shape = {"n_layer": model.cfg["n_layers"], "n_head": model.cfg["n_heads"],
             "emb_dim": model.cfg["emb_dim"]}
    parser = build_arg_parser()
    for flag, value in shape.items():
        if getattr(args, flag) not in (value, parser.get_default(flag)):
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)} contradicts "
                             f"--init-from {args.init_from}, which has {value}; drop the flag")
    if args.model_size and gpt2.MODEL_CONFIGS[args.model_size]["n_layers"] != shape["n_layer"]:
        raise UsageError(f"--model-size {args.model_size} contradicts --init-from "
                         f"{args.init_from}; drop --model-size: the weights give the shape")
    if args.context > model.cfg["context_length"]:
        raise UsageError(f"--context {args.context} is longer than the {model.cfg['context_length']}"
                         f" positions of --init-from {args.init_from}; use a smaller --context")
    return model


def build_model(cfg: dict, tie_weights: bool, device: torch.device,
                init: gpt2.GPTModel | None = None) -> gpt2.GPTModel:
    """The model to train: `init`'s weights (their own tying) with `cfg`'s dropout, or GPT-2's
    initialisation; tied: one matrix both embeds tokens and scores them at the output."""
    if init is None:
        model = gpt2.init_weights(gpt2.GPTModel(cfg), tie_head=tie_weights)
    else:
        model = gpt2.GPTModel(cfg)
        if init.out_head.weight is init.tok_emb.weight:
            model.out_head.weight = model.tok_emb.weight
        model.load_state_dict(init.state_dict())
    model = model.to(device)
    if device.type == "cpu":
        gpt2_fast.accelerate(model)  # faster CPU layers, same parameters and state-dict keys
    return model


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW that decays matrices only: biases, norm scales and shifts keep their size."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    try:  # one fused kernel for the whole update, where this PyTorch and device have it
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
    except RuntimeError:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def lr_at(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Learning rate for step `step` (0-based): linear warm-up over `warmup` steps to `max_lr`,
    then a cosine from `max_lr` at the end of warm-up down to `min_lr` at step `total`."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def flops_per_token(model: gpt2.GPTModel) -> float:
    """Training FLOPs per token: 6 per matmul weight (2 forward, 4 backward), plus causal
    attention's two (t x t) products, 12 x layers x width x context halved by the mask."""
    cfg = model.cfg
    matmul_weights = sum(m.weight.numel() for m in model.modules()
                         if isinstance(m, torch.nn.Linear))
    return 6 * matmul_weights + 6 * cfg["n_layers"] * cfg["emb_dim"] * cfg["context_length"]


def gpu_peak_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak, for model-FLOPs utilisation; None for an unlisted device."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_BF16_PEAK_FLOPS.items() if key in name), None)

# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def clipped_step(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """optimizer.step() on gradients clipped to a global L2 norm of `max_norm` (0: never);
    returns the norm before clipping.

    The same update as torch.nn.utils.clip_grad_norm_ then optimizer.step(), without the pass
    over every gradient that clip_grad_norm_ makes on every step (multiplying by 1 when
    nothing is clipped; ~25 ms for 124M gradients on two cores). Here a step under the limit
    multiplies nothing, and a step over it hands the factor to a fused AdamW, which divides
    each gradient by it while reading it for the update: the `grad_scale` attribute that
    torch.amp.GradScaler sets to unscale gradients. Other optimizers and devices get the
    in-place multiply.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if not max_norm or norm <= max_norm:
        optimizer.step()
    elif optimizer.defaults.get("fused") and grads[0].device.type in ("cpu", "cuda"):
        optimizer.grad_scale = (norm + 1e-6) / max_norm  # the kernel divides by it
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale
    else:
        for grad in grads:
            grad.mul_(max_norm / (norm + 1e-6))
        optimizer.step()
    return norm


@dataclass
class Trainer:
    """What a step needs: the model as trained (maybe compiled and DDP-wrapped), the plain
    model underneath (saved and evaluated), the data, and the batch arrangement."""
    model: torch.nn.Module
    raw: gpt2.GPTModel
    optimizer: torch.optim.Optimizer
    train: TokenWindows
    val: TokenWindows
    dist: Dist
    batch_size: int
    accum: int
    dtype: torch.dtype | None
    seed: int
    hellaswag_examples: list[dict]

    def step(self, position: DataPosition, lr: float, grad_clip: float) -> tuple[float, float]:
        """One optimisation step; returns (mean loss over all ranks, gradient norm)."""
        b, world, device = self.batch_size, self.dist.world, self.dist.device
        epoch, base = position.claim(b * self.accum * world, len(self.train))
        order = epoch_order(len(self.train), self.seed, epoch)
        total = torch.zeros((), device=device)
        for m in range(self.accum):
            start = base + (m * world + self.dist.rank) * b
            inputs, targets = self.train.batch(order[start:start + b])
            last = m == self.accum - 1
            sync = self.model.no_sync() if world > 1 and not last else contextlib.nullcontext()
            with sync:
                with autocast(device, self.dtype):
                    loss = gpt2.calc_loss_batch(inputs, targets, self.model, device) / self.accum
                loss.backward()
            total += loss.detach()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        norm = clipped_step(self.optimizer, grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        if world > 1:
            dist.all_reduce(total)  # a sum: gloo has no average
            total /= world
        return total.item(), norm.item()

    @torch.no_grad()
    def val_loss(self, n_batches: int) -> float:
        """Mean loss over the first n_batches x batch_size validation windows (dropout off)."""
        self.raw.eval()
        n = min(len(self.val), n_batches * self.batch_size)
        total = 0.0
        for start in range(0, n, self.batch_size):
            indices = np.arange(start, min(n, start + self.batch_size))
            with autocast(self.dist.device, self.dtype):
                loss = gpt2.calc_loss_batch(*self.val.batch(indices), self.raw, self.dist.device)
            total += loss.item() * len(indices)
        self.raw.train()
        return total / n

    def sample(self, prompt: str, max_new_tokens: int) -> str:
        """A greedy continuation of `prompt`: a quick look at what the model has learned."""
        return gpt2.sample_text(self.raw, gpt2.get_tokenizer(), self.dist.device, prompt,
                                max_new_tokens)


def rng_states(rank_dist: Dist) -> list[dict]:
    """Every rank's torch (and CUDA) random state, so dropout continues as if never stopped."""
    state = {"torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state() if rank_dist.device.type == "cuda" else None}
    if rank_dist.world == 1:
        return [state]
    gathered = [None] * rank_dist.world
    dist.all_gather_object(gathered, state)
    return gathered


def restore_rng(states: list[dict], rank: int) -> None:
    state = states[rank % len(states)]
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a temporary file, then rename it to `path`: `path` is never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def training_state(trainer: Trainer, step: int, position: DataPosition, args: argparse.Namespace,
                   rngs: list[dict]) -> dict:
    """A resumable checkpoint; gpt2.load_checkpoint reads its config and weights too."""
    return {"config": trainer.raw.cfg, "model_state_dict": trainer.raw.state_dict(),
            "optimizer_state_dict": trainer.optimizer.state_dict(), "step": step,
            "data_position": [position.epoch, position.index], "rng_states": rngs,
            "dtype": "bf16" if trainer.dtype == torch.bfloat16 else "fp32",  # what auto chose
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}


def load_resume_state(path: Path, cfg: dict, tie_weights: bool) -> dict:
    """The checkpoint to resume from, refused (UsageError) if it is not this run's model."""
    if not path.is_file():
        raise UsageError(f"--resume: no checkpoint at {path}; start without --resume, or give "
                         "the --out-dir of the run to continue")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("config") != cfg or state["args"].get("tie_weights") != tie_weights:
        raise UsageError(f"--resume: {path} holds a model with config {state.get('config')} "
                         f"(tied weights: {state['args'].get('tie_weights')}), not {cfg} (tied "
                         f"weights: {tie_weights}); rerun with that model's flags or another "
                         "--out-dir")
    return state


def read_log(path: Path, up_to_step: int | None = None) -> list[dict]:
    """The records of log.jsonl (those up to a step, when resuming from it)."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [r for r in records if up_to_step is None or r["step"] <= up_to_step]


def plot_loss(records: list[dict], path: Path) -> None:
    """Training loss at every step and validation loss at every evaluation, against step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*train), label="training loss", linewidth=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


# Recipes: the flags of a known run, applied as defaults (flags given still win). TinyStories
# with GPT-2 124M: context 1024, 512 windows (~0.5M tokens) a step by accumulation, weight
# decay 0.001, cosine schedule, clipping, tied weights with GPT-2's normal initialisation,
# 3,000 steps, compiled. A public run of this recipe reports a validation loss of 1.24 after
# about 3 h 45 min on one A100; it has not been measured on the course's machines.
RECIPES = {
    "tinystories": {"dataset": "tinystories", "model_size": "124M", "context": 1024,
                    "batch_size": 16, "batch_tokens": 512 * 1024, "weight_decay": 0.001,
                    "lr": 6e-4, "min_lr": 6e-5, "warmup": 100, "steps": 3000, "grad_clip": 1.0,
                    "tie_weights": True, "compile": True, "eval_every": 250,
                    "prompt": "Once upon a time", "out_dir": gpt_download.DATA_DIR / "tinystories"},
}


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipe", choices=RECIPES,
                   help="the settings of a known run as defaults: " + "; ".join(
                       f"{name}: {settings}" for name, settings in RECIPES.items()))
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=token_shards.DEFAULT_SOURCE,
                      help="a text file, folder or glob; fineweb-edu[:CONFIG] or tinystories "
                           "(Hub, streamed); or a local folder of parquet/json in the Hub's layout")
    data.add_argument("--tokens-dir", type=Path, default=token_shards.TOKENS_DIR,
                      help="where tokenised shards are kept")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="local text: the last this much of the tokens is validation")
    data.add_argument("--shard-tokens", type=int, default=token_shards.DEFAULT_SHARD_TOKENS,
                      help="tokens per shard (Hub data sets: shard 0 is validation)")
    data.add_argument("--workers", type=int, default=None,
                      help="tokenising processes for Hub data sets (default: cores - 1)")
    model = p.add_argument_group("model")
    model.add_argument("--init-from", metavar="openai-124M|openai-355M|PATH",
                       help="continue pretraining from these weights (OpenAI's, or a .pth from "
                            "gpt2.save_checkpoint); the model's shape comes from them")
    model.add_argument("--model-size", choices=gpt2.MODEL_CONFIGS,
                       help="a GPT-2 size's layers, heads and width (overrides the three below)")
    course = gpt2.COURSE_MODEL_CONFIG  # the defaults make the course model
    model.add_argument("--n-layer", type=int, default=course["n_layers"])
    model.add_argument("--n-head", type=int, default=course["n_heads"])
    model.add_argument("--emb-dim", type=int, default=course["emb_dim"])
    model.add_argument("--context", type=int, default=course["context_length"],
                       help="tokens per training window")
    model.add_argument("--dropout", type=float, default=0.1)
    model.add_argument("--tie-weights", action=argparse.BooleanOptionalAction, default=True,
                       help="share the token embedding with the output head")
    train = p.add_argument_group("training")
    train.add_argument("--steps", type=int, default=500, help="optimisation steps in all")
    train.add_argument("--batch-size", type=int, default=8, help="windows per micro-batch per process")
    train.add_argument("--batch-tokens", type=int, default=None,
                       help="tokens per step, across accumulation and processes "
                            "(default: one micro-batch per process)")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    train.add_argument("--min-lr", type=float, default=1e-4, help="learning rate at the end")
    train.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    train.add_argument("--weight-decay", type=float, default=0.1)
    train.add_argument("--grad-clip", type=float, default=1.0, help="0 turns clipping off")
    train.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                       help="autocast format; auto = bf16 on a GPU that has it; on a CPU, bf16 "
                            "or fp32, whichever multiplies faster here (measured, < 1 s)")
    train.add_argument("--compile", action="store_true", help="torch.compile the model")
    train.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    train.add_argument("--seed", type=int, default=123)
    out = p.add_argument_group("evaluation and output")
    out.add_argument("--eval-every", type=int, default=100,
                     help="steps between validation, sample and checkpoint")
    out.add_argument("--eval-batches", type=int, default=20,
                     help="validation micro-batches (the first windows of the split)")
    out.add_argument("--eval-hellaswag", type=int, default=0, metavar="N",
                     help="also score the first N HellaSwag examples at each evaluation (0: off)")
    out.add_argument("--prompt", default="ROMEO:", help="start of the greedy sample")
    out.add_argument("--sample-tokens", type=int, default=40)
    out.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                     help="checkpoint.pth, model.pth, log.jsonl and loss.png go here")
    out.add_argument("--resume", action="store_true",
                     help="continue from OUT_DIR/checkpoint.pth exactly where it stopped")
    out.add_argument("--stop-at", type=int, default=None,
                     help="stop after this step (a checkpoint is written): continue later "
                          "with --resume")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse numbers that cannot work, before anything is read or written."""
    positive = ["steps", "batch_size", "context", "eval_every", "eval_batches", "shard_tokens",
                "n_layer", "n_head", "emb_dim"]
    for name in positive:
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("warmup", "sample_tokens", "eval_hellaswag", "grad_clip", "weight_decay", "lr", "min_lr"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    if not 0 < args.val_fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    if args.emb_dim % args.n_head:
        raise UsageError(f"--emb-dim ({args.emb_dim}) must be a multiple of --n-head ({args.n_head})")
    if args.stop_at is not None and args.stop_at <= 0:
        raise UsageError(f"--stop-at must be positive, got {args.stop_at}")
    if args.workers is not None and args.workers <= 0:
        raise UsageError(f"--workers must be positive, got {args.workers}")


def accumulation_steps(batch_tokens: int | None, batch_size: int, context: int, world: int) -> int:
    """Micro-batches per step per process so that a step holds `batch_tokens` tokens."""
    per_micro_step = batch_size * context * world
    if batch_tokens is None:
        return 1
    if batch_tokens <= 0 or batch_tokens % per_micro_step:
        raise UsageError(f"--batch-tokens ({batch_tokens}) must be a positive multiple of "
                         f"batch size x context x processes = {per_micro_step}")
    return batch_tokens // per_micro_step


def prepare_on_main(args: argparse.Namespace, rank_dist: Dist) -> tuple[Path, list[dict]]:
    """Rank 0 tokenises the corpus (once) and loads any HellaSwag examples; the other ranks
    wait for it, and stop with the same message if it could not."""
    folder, examples, error = None, [], None
    if rank_dist.is_main:
        try:
            folder = token_shards.prepare_tokens(args.dataset, args.tokens_dir, args.val_fraction,
                                                 args.shard_tokens, args.workers)
            if args.eval_hellaswag:
                examples = hellaswag.load_hellaswag(limit=args.eval_hellaswag)
        except (token_shards.CorpusError, gpt_download.DownloadError,
                hellaswag.MalformedExampleError) as err:
            error = str(err)
    if rank_dist.world > 1:
        holder = [(folder, error)]
        dist.broadcast_object_list(holder)  # the others wait here until the shards exist
        folder, error = holder[0]
    if error is not None:
        raise UsageError(error)
    return folder, examples


def load_windows(args: argparse.Namespace, folder: Path, world: int, accum: int
                 ) -> tuple[TokenWindows, TokenWindows]:
    """The train and validation windows, refused if a step cannot be filled."""
    train = TokenWindows(token_shards.load_split(folder, "train"), args.context)
    val = TokenWindows(token_shards.load_split(folder, "val"), args.context)
    per_step = args.batch_size * accum * world
    for name, windows, needed in (("training", train, per_step), ("validation", val, 1)):
        if len(windows) < needed:
            raise UsageError(
                f"the {name} split of {args.dataset} has {len(windows)} windows of "
                f"{args.context} + 1 tokens, and a step needs {needed}: use a smaller "
                "--context or --batch-size, or a larger corpus")
    return train, val


def run(args: argparse.Namespace) -> None:
    gpt2_fast.flush_subnormals()  # first: the threads torch starts later copy the setting
    gpt2_fast.tune_malloc()  # process-wide allocator setting: this script owns its process
    trainer, step, position, log_path = prepare_training(args)
    train_loop(trainer, args, step, position, log_path)


def prepare_training(args: argparse.Namespace) -> tuple[Trainer, int, DataPosition, Path]:
    """Everything before the first step: processes, data, model, optimizer, resume state and
    the log; returns what train_loop needs besides the arguments."""
    check_args(args)
    rank_dist = setup_process(args.device)
    device, is_main = rank_dist.device, rank_dist.is_main
    if device.type == "cuda":
        setup_cuda()
    accum = accumulation_steps(args.batch_tokens, args.batch_size, args.context, rank_dist.world)
    init = initial_weights(args)
    cfg = model_config(args, init)
    if init is not None:
        args.tie_weights = init.out_head.weight is init.tok_emb.weight
    checkpoint_path = args.out_dir / "checkpoint.pth"
    resume = load_resume_state(checkpoint_path, cfg, args.tie_weights) if args.resume else None
    folder, examples = prepare_on_main(args, rank_dist)
    train, val = load_windows(args, folder, rank_dist.world, accum)

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    raw = build_model(cfg, args.tie_weights, device, init)
    optimizer = make_optimizer(raw, args.lr, args.weight_decay)
    step, position = 0, DataPosition()
    if resume is not None:
        raw.load_state_dict(resume["model_state_dict"])
        optimizer.load_state_dict(resume["optimizer_state_dict"])
        step, position = resume["step"], DataPosition(*resume["data_position"])
        restore_rng(resume["rng_states"], rank_dist.rank)
    else:
        torch.manual_seed(args.seed + rank_dist.rank)  # each rank its own dropout masks
    model = torch.compile(raw) if args.compile else raw
    if rank_dist.world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    trainer = Trainer(model, raw, optimizer, train, val, rank_dist, args.batch_size, accum,
                      autocast_dtype(resume["dtype"] if resume and "dtype" in resume
                                     else args.dtype, device), args.seed, examples)

    log_path = args.out_dir / "log.jsonl"
    if is_main:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        records = read_log(log_path, step) if resume is not None else []
        log_path.write_text("".join(json.dumps(r) + "\n" for r in records))
        print(f"{gpt2.count_parameters(raw):,} parameters, {len(train):,} training windows of "
              f"{args.context} tokens, {args.batch_size * accum * rank_dist.world * args.context:,} "
              f"tokens per step ({rank_dist.world} process(es) x {accum} micro-batch(es) x "
              f"{args.batch_size}), {device}, {trainer.dtype or 'fp32'}", file=sys.stderr)
    return trainer, step, position, log_path


def train_loop(trainer: Trainer, args: argparse.Namespace, step: int, position: DataPosition,
               log_path: Path) -> None:
    """Steps until --steps (or --stop-at), evaluating and checkpointing every --eval-every."""
    rank_dist = trainer.dist
    is_main = rank_dist.is_main
    tokens_per_step = args.batch_size * trainer.accum * rank_dist.world * args.context
    per_token, peak = flops_per_token(trainer.raw), gpu_peak_flops(rank_dist.device)
    last = min(args.steps, args.stop_at or args.steps)
    bar = tqdm(total=args.steps, initial=step, disable=not is_main, unit="step", dynamic_ncols=True)
    with bar, log_path.open("a") if is_main else contextlib.nullcontext() as log:
        while step < last:
            start = time.perf_counter()
            lr = lr_at(step, args.lr, args.min_lr, args.warmup, args.steps)
            loss, norm = trainer.step(position, lr, args.grad_clip)
            if rank_dist.device.type == "cuda":
                torch.cuda.synchronize()
            step += 1
            tokens_per_s = tokens_per_step / (time.perf_counter() - start)
            record = {"step": step, "loss": loss, "lr": lr, "grad_norm": norm,
                      "tokens_per_s": tokens_per_s}
            if peak:
                record["mfu"] = per_token * tokens_per_s / (peak * rank_dist.world)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            bar.update()
            if step % args.eval_every == 0 or step == last:
                record.update(evaluate_and_save(trainer, args, step, position))
            if is_main and "val_loss" in record:
                bar.write(f"step {step}: train {loss:.3f}, val {record['val_loss']:.3f} | "
                          f"{record['sample']!r}")
            if is_main:
                log.write(json.dumps(record) + "\n")
                log.flush()
    if is_main and step == args.steps:
        final = args.out_dir / "model.pth"
        save_atomically(final, lambda tmp: gpt2.save_checkpoint(tmp, trainer.raw))
        plot_loss(read_log(log_path), args.out_dir / "loss.png")
        print(f"saved {final} and {args.out_dir / 'loss.png'}", file=sys.stderr)


def evaluate_and_save(trainer: Trainer, args: argparse.Namespace, step: int,
                      position: DataPosition) -> dict:
    """Validation loss and a sample (rank 0), and a checkpoint with every rank's RNG state;
    the seconds each took go into the log too."""
    rngs = rng_states(trainer.dist)  # a collective: every rank takes part
    if not trainer.dist.is_main:
        return {}
    start = time.perf_counter()
    result = {"val_loss": trainer.val_loss(args.eval_batches),
              "sample": trainer.sample(args.prompt, args.sample_tokens)}
    if trainer.hellaswag_examples:
        scores = hellaswag.evaluate_hellaswag(trainer.raw, trainer.hellaswag_examples, progress=False)
        result.update(hellaswag_acc=scores["acc"], hellaswag_acc_norm=scores["acc_norm"])
    saving = time.perf_counter()
    state = training_state(trainer, step, position, args, rngs)
    save_atomically(args.out_dir / "checkpoint.pth", lambda tmp: torch.save(state, tmp))
    return {**result, "eval_seconds": saving - start,
            "checkpoint_seconds": time.perf_counter() - saving}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with a --recipe's settings as defaults that given flags override."""
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.recipe:
        parser.set_defaults(**RECIPES[args.recipe])
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
