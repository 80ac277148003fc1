"""Checks for the exercises of chapter 4, "The GPT architecture".

Every expected number is computed here from `gpt2.py`: the models are built on PyTorch's "meta"
device, which records each tensor's shape but allocates no memory, so even GPT-2 XL (1.6 billion
parameters) is "built" in a fraction of a second.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

import gpt2

from . import verdict

LARGER_SIZES = ("355M", "774M", "1558M")
BYTES_PER_FP32 = 4
MB = 1024 * 1024


def size_config(model_size: str) -> dict:
    """GPT_CONFIG_124M with the width, depth and heads of one GPT-2 size (qkv_bias stays False)."""
    return {**gpt2.GPT_CONFIG_124M, **gpt2.MODEL_CONFIGS[model_size]}


def _meta_model(cfg: dict) -> gpt2.GPTModel:
    with torch.device("meta"):
        return gpt2.GPTModel(cfg)


def _param_count(cfg: dict, tied: bool) -> int:
    model = _meta_model(cfg)
    total = gpt2.count_parameters(model)
    return total - model.out_head.weight.numel() if tied else total


def _missing_sizes(answer) -> str | None:
    """Why `answer` is not a dict with one number per larger size, or None if it is."""
    if answer is None:
        return "fill in a dict {size: number} for the sizes " + ", ".join(LARGER_SIZES)
    if not isinstance(answer, dict) or any(size not in answer for size in LARGER_SIZES):
        return "give a dict with the keys " + ", ".join(repr(s) for s in LARGER_SIZES)
    if not all(isinstance(answer[size], (int, float)) for size in LARGER_SIZES):
        return "every value should be a number"
    return None


def check_block_params(answer: dict | None) -> bool:
    """Exercise 1: parameters of one TransformerBlock of the 124M model, {"att", "ff", "block"}."""
    if answer is None or not isinstance(answer, dict):
        return verdict(False, 'fill in a dict {"att": ..., "ff": ..., "block": ...}')
    block = gpt2.TransformerBlock(gpt2.GPT_CONFIG_124M)
    expected = {"att": gpt2.count_parameters(block.att), "ff": gpt2.count_parameters(block.ff),
                "block": gpt2.count_parameters(block)}
    wrong = [key for key, count in expected.items() if answer.get(key) != count]
    if wrong:
        return verdict(False, f"{', '.join(wrong)} not right yet; count weights AND biases of "
                              "every Linear, and remember the block's two LayerNorms")
    return verdict(True, f"the feed-forward ({expected['ff']:,}) holds twice as many parameters "
                         f"as the attention ({expected['att']:,})")


def check_param_counts(answer: dict | None) -> bool:
    """Exercise 2: parameters of GPT-2 medium, large and XL with weight tying, by size."""
    problem = _missing_sizes(answer)
    if problem:
        return verdict(False, problem)
    expected = {size: _param_count(size_config(size), tied=True) for size in LARGER_SIZES}
    wrong = [size for size in LARGER_SIZES if answer[size] != expected[size]]
    if not wrong:
        return verdict(True, "with weight tying, each count is close to the size in the "
                             "model's name")
    untied = {size: _param_count(size_config(size), tied=False) for size in wrong}
    if all(answer[size] == untied[size] for size in wrong):
        return verdict(False, "these are the counts without weight tying; subtract the output "
                              "head, which shares its weight with tok_emb")
    return verdict(False, f"{', '.join(wrong)} not right yet; start from GPT_CONFIG_124M, update "
                          "emb_dim, n_layers and n_heads from MODEL_CONFIGS, keep qkv_bias=False")


def check_memory_mb(answer: dict | None) -> bool:
    """Exercise 3: fp32 size in MB (1024**2 bytes) of each larger model as GPTModel builds it."""
    problem = _missing_sizes(answer)
    if problem:
        return verdict(False, problem)
    counts = {size: _param_count(size_config(size), tied=False) for size in LARGER_SIZES}
    expected = {size: count * BYTES_PER_FP32 / MB for size, count in counts.items()}
    if all(math.isclose(answer[size], expected[size], rel_tol=1e-3) for size in LARGER_SIZES):
        return verdict(True, f"GPT-2 XL needs about {expected['1558M'] / 1024:.1f} GB just for "
                             "its weights, before any activations or gradients")
    if all(math.isclose(answer[size], counts[size] * BYTES_PER_FP32 / 1e6, rel_tol=1e-3)
           for size in LARGER_SIZES):
        return verdict(False, "close: use 1 MB = 1024 * 1024 bytes, as the chapter does")
    return verdict(False, "multiply the number of parameters (untied: both matrices are stored) "
                          "by 4 bytes per float32 and divide by 1024 * 1024")


def check_heads_config(cfg: dict | None, head_dim: int | None) -> bool:
    """Exercise 4: a 124M config with another number of heads, and its size per head."""
    if not isinstance(cfg, dict) or head_dim is None:
        return verdict(False, "fill in both the config (a dict) and the head dimension")
    if cfg.get("n_heads") == gpt2.GPT_CONFIG_124M["n_heads"]:
        return verdict(False, "change n_heads to something other than 12")
    try:
        count = _param_count(cfg, tied=False)
    except (KeyError, ValueError) as err:
        return verdict(False, f"GPTModel cannot be built from this config: {err}")
    if count != _param_count(gpt2.GPT_CONFIG_124M, tied=False):
        return verdict(False, "the parameter count changed; change only n_heads")
    if head_dim != cfg["emb_dim"] // cfg["n_heads"]:
        return verdict(False, "each head gets an equal slice of the embedding; how wide is it?")
    return verdict(True, f"{cfg['n_heads']} heads of width {head_dim}: the heads split the same "
                         "query, key and value matrices, so the parameter count cannot change")


def check_separate_dropout(model: nn.Module | None, cfg: dict) -> bool:
    """Exercise 5: does `model` use cfg's drop_rate_emb, drop_rate_attn and drop_rate_shortcut?"""
    if model is None:
        return verdict(False, "build the model with three separate dropout rates")
    rates = [cfg["drop_rate_emb"], cfg["drop_rate_attn"], cfg["drop_rate_shortcut"]]
    if len(set(rates)) < 3:
        return verdict(False, "pick three different rates, so the check can tell them apart")
    if model.drop_emb.p != cfg["drop_rate_emb"]:
        return verdict(False, "drop_emb does not use drop_rate_emb")
    if any(block.att.dropout.p != cfg["drop_rate_attn"] for block in model.trf_blocks):
        return verdict(False, "the attention of every block should drop with drop_rate_attn")
    if any(block.drop_shortcut.p != cfg["drop_rate_shortcut"] for block in model.trf_blocks):
        return verdict(False, "drop_shortcut of every block should use drop_rate_shortcut")
    return verdict(True, "embeddings, attention weights and shortcuts each have their own rate")
