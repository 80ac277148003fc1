"""Generation speed and int8 quality: our GPTModel against Hugging Face's GPT2LMHeadModel.

Speed: batch 1, a 16-token prompt, 200 new greedy tokens, the same random GPT-2 124M weights
on both sides. Ours is `gpt2.generate` on `gpt2_fast.for_generation(model, dtype)` with the KV cache
(and once without it, to show what the cache buys); theirs is `GPT2LMHeadModel.generate` with
its cache. A bare loop that multiplies one vector by every weight matrix (nn.Linear's layout,
fp32 and bf16) is timed alongside: at batch 1 that is the work no decoding step in that format
can skip, so our time per token is also given as a multiple of it (int8's against fp32's).

Quality: the course's own checkpoint (GPT-2 124M trained on The Verdict as in the book's
chapter 5, trained here once and cached, or --checkpoint) generates 200 greedy tokens in fp32
and in int8; we report how many positions agree and the validation loss of each.

    python bench/generate.py            # full run: ~7 min, plus ~14 the first time (training)
    python bench/generate.py --quick    # seconds, tiny model
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import (base_parser, bench_config, emit, emit_ratios, hf_twin, interleaved_times,
                     paired_speedup, random_gpt, setup)

import gpt2
import gpt2_fast
import gpt_download

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Positive: ratio >= target; negative: ratio <= -target (see _common.emit_ratios).
TARGETS = {"fp32_vs_hf_fp32": 1.1, "bf16_vs_hf_bf16": 1.6, "int8_vs_hf_fp32": 2.0,
           "int8_greedy_agreement": 0.9, "int8_over_fp32_val_loss": -1.01}


def bare_weight_loop(model: gpt2.GPTModel, dtype: str):
    """One vector times every weight matrix of the model, as plain nn.Linear would do it."""
    torch_dtype = TORCH_DTYPES[dtype]
    weights = [module.weight.detach().to(torch_dtype) for module in model.modules()
               if isinstance(module, torch.nn.Linear)]
    vector = torch.randn(1, 4 * model.cfg["emb_dim"], dtype=torch_dtype)

    @torch.inference_mode()
    def run():
        for weight in weights:
            F.linear(vector[:, :weight.shape[1]], weight)
    return run


def speed(args, new_tokens: int) -> dict[str, float]:
    """Tokens/s of every variant, timed in turns; returns the ratios."""
    model = random_gpt(bench_config(args.quick)).eval()
    prompt = torch.randint(0, model.cfg["vocab_size"], (1, 16))
    context = model.cfg["context_length"]

    def ours(fast, use_cache=True):
        return lambda: gpt2.generate(fast, prompt, new_tokens, context, use_cache=use_cache)

    def theirs(twin):
        mask = torch.ones_like(prompt)
        return lambda: twin.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, use_cache=True)

    fast = {dtype: gpt2_fast.for_generation(model, dtype) for dtype in ("fp32", "bf16", "int8")}
    twins = {dtype: hf_twin(model).eval().to(TORCH_DTYPES[dtype]) for dtype in TORCH_DTYPES}
    same = torch.equal(ours(fast["fp32"])(), theirs(twins["fp32"])())
    emit("fp32_greedy_tokens_equal_hf", value=same)

    runs = {"ours_fp32": ours(fast["fp32"]), "hf_fp32": theirs(twins["fp32"]),
            "ours_int8": ours(fast["int8"]), "ours_bf16": ours(fast["bf16"]),
            "hf_bf16": theirs(twins["bf16"]), "ours_fp32_plain_model": ours(model),
            "loop_fp32": bare_weight_loop(model, "fp32"), "loop_bf16": bare_weight_loop(model, "bf16")}
    times = interleaved_times(runs, args.repeats)
    times.update(interleaved_times({"ours_fp32_no_cache": ours(fast["fp32"], use_cache=False)},
                                   args.repeats))
    seconds = {name: statistics.median(values) for name, values in times.items()}
    for name, value in seconds.items():
        if name.startswith("loop"):
            emit(f"bare_weight_loop_{name[5:]}", ms=1e3 * value)
            continue
        loop = "loop_bf16" if name.endswith("bf16") else "loop_fp32"
        emit(f"generate_{name}", tokens_per_s=new_tokens / value,
             ms_per_token=1e3 * value / new_tokens, bare_loop=loop[5:],
             per_token_over_bare_loop=value / new_tokens / seconds[loop])
    return {"fp32_vs_hf_fp32": paired_speedup(times["ours_fp32"], times["hf_fp32"]),
            "bf16_vs_hf_bf16": paired_speedup(times["ours_bf16"], times["hf_bf16"]),
            "int8_vs_hf_fp32": paired_speedup(times["ours_int8"], times["hf_fp32"]),
            "cache_speedup_fp32": seconds["ours_fp32_no_cache"] / seconds["ours_fp32"]}


def verdict_loaders(context_length: int):
    """The book's chapter-5 split of The Verdict: 90% training, 10% validation."""
    text = gpt_download.fetch_data("the-verdict.txt").read_text(encoding="utf-8")
    split = int(0.9 * len(text))
    torch.manual_seed(123)
    train = gpt2.create_dataloader_v1(text[:split], batch_size=2, max_length=context_length,
                                      stride=context_length, drop_last=True, shuffle=True)
    val = gpt2.create_dataloader_v1(text[split:], batch_size=2, max_length=context_length,
                                    stride=context_length, drop_last=False, shuffle=False)
    return train, val


def course_checkpoint(args) -> Path:
    """--checkpoint, or GPT-2 124M trained on The Verdict with the book's chapter-5 settings
    (10 epochs, AdamW lr 4e-4, weight decay 0.1, context 256), trained once and cached."""
    if args.checkpoint is not None:
        return args.checkpoint
    if args.quick:
        path = Path(tempfile.mkdtemp()) / "verdict-tiny.pth"
        config, epochs = {**gpt2.GPT_CONFIG_124M, **bench_config(True), "qkv_bias": False}, 1
    else:
        path = gpt_download.DATA_DIR / "bench" / "verdict-124M.pth"
        config, epochs = {**gpt2.GPT_CONFIG_124M, "context_length": 256}, 10
    if path.exists():
        return path
    train_loader, val_loader = verdict_loaders(config["context_length"])
    model = gpt2_fast.accelerate(gpt2.GPTModel(config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON lines
        gpt2.train_model_simple(model, train_loader, val_loader, optimizer, torch.device("cpu"),
                                epochs, eval_freq=5, eval_iter=5,
                                start_context="Every effort moves you",
                                tokenizer=gpt2.get_tokenizer())
    emit("trained_verdict_checkpoint", epochs=epochs, seconds=time.perf_counter() - start,
         path=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    gpt2.save_checkpoint(path, model)
    return path


class Float32Logits(torch.nn.Module):
    """Hands a prepared model's logits back in fp32, so every loss is computed alike."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx).float()


def quality(args, new_tokens: int) -> dict[str, float]:
    """int8 (and bf16) against fp32 on the course's checkpoint: greedy agreement, val loss."""
    model, _ = gpt2.load_checkpoint(course_checkpoint(args))
    with torch.inference_mode():
        return compare_to_fp32(model.eval(), new_tokens)


def compare_to_fp32(model: gpt2.GPTModel, new_tokens: int) -> dict[str, float]:
    context = model.cfg["context_length"]
    _, val_loader = verdict_loaders(context)
    tokenizer = gpt2.get_tokenizer()
    prompt = gpt2.text_to_token_ids("Every effort moves you", tokenizer)
    reference = gpt2.generate(model, prompt, new_tokens, context)[0, prompt.shape[1]:]
    val_inputs = next(iter(val_loader))[0][:1, :new_tokens]  # (1, new_tokens)
    reference_next = model(val_inputs).argmax(-1)
    fp32_loss = gpt2.calc_loss_loader(val_loader, model, torch.device("cpu"))
    emit("val_loss_fp32", loss=fp32_loss)
    ratios = {}
    for dtype in ("bf16", "int8"):
        fast = gpt2_fast.for_generation(model, dtype)
        tokens = gpt2.generate(fast, prompt, new_tokens, context)[0, prompt.shape[1]:]
        greedy = (tokens == reference).float().mean().item()
        forced = (fast(val_inputs).argmax(-1) == reference_next).float().mean().item()
        loss = gpt2.calc_loss_loader(val_loader, Float32Logits(fast), torch.device("cpu"))
        emit(f"quality_{dtype}", greedy_agreement=greedy, positions=new_tokens,
             next_token_agreement_on_val_text=forced, val_loss=loss)
        ratios[f"{dtype}_greedy_agreement"] = greedy
        ratios[f"{dtype}_over_fp32_val_loss"] = loss / fp32_loss
    return ratios


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path,
                        help="a checkpoint saved by gpt2.save_checkpoint for the int8 quality "
                             "check (default: train GPT-2 124M on The Verdict once, cached)")
    parser.add_argument("--skip-speed", action="store_true", help="only the quality check")
    args = parser.parse_args()
    setup(args)
    new_tokens = 20 if args.quick else 200
    ratios = {} if args.skip_speed else speed(args, new_tokens)
    ratios.update(quality(args, new_tokens))
    emit_ratios(ratios, TARGETS)


if __name__ == "__main__":
    main()
