"""Checks for the exercises of chapter 3, "Attention".

Every expected answer is worked out here, from gpt2.py or from first principles, so a check can
never drift from the library it is about.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

import gpt2

from . import verdict


def check_wrapper_d_out(d_out: int | None, num_heads: int = 2, target_dim: int = 2) -> bool:
    """Exercise 1: the `d_out` per head that makes a wrapper with `num_heads` heads output
    `target_dim` numbers per token (the wrapper concatenates its heads' outputs)."""
    if d_out is None:
        return verdict(False, "set d_out; the wrapper's output has num_heads * d_out columns.")
    expected = target_dim // num_heads
    return verdict(d_out == expected,
                   f"{num_heads} heads of d_out={expected} concatenate to {target_dim} columns; "
                   f"d_out={d_out} gives {num_heads * d_out}.")


def check_gpt2_attention_params(answer: int | None, qkv_bias: bool) -> bool:
    """Exercise 2: parameters of one attention layer of GPT-2 124M, with or without q/k/v biases."""
    cfg = gpt2.GPT_CONFIG_124M
    d = cfg["emb_dim"]
    layer = gpt2.MultiHeadAttention(d, d, cfg["context_length"], 0.0, cfg["n_heads"], qkv_bias)
    expected = gpt2.count_parameters(layer)
    if answer is None:
        return verdict(False, "count the weights of W_query, W_key, W_value and out_proj, "
                              "and their biases.")
    biases = "3 q/k/v biases of 768 plus" if qkv_bias else "no q/k/v biases, only"
    return verdict(answer == expected,
                   f"4 matrices of {d}x{d} = {4 * d * d:,}, {biases} out_proj's bias: "
                   f"{expected:,} in all (you said {answer}).")


def check_heads_at_equal_params(attention: nn.Module | None) -> bool:
    """Exercise 3: a 768-wide causal attention with a head count other than GPT-2's 12 and
    exactly as many parameters as GPT-2's layer (heads split d_out, they add no weights)."""
    if attention is None:
        return verdict(False, "build a MultiHeadAttention(768, 768, ...) with, say, 24 heads.")
    cfg = gpt2.GPT_CONFIG_124M
    d, heads = cfg["emb_dim"], getattr(attention, "num_heads", None)
    if heads is None or heads == cfg["n_heads"]:
        return verdict(False, f"use a number of heads other than {cfg['n_heads']} "
                              "(the module needs a num_heads attribute).")
    qkv_bias = getattr(getattr(attention, "W_query", None), "bias", None) is not None
    reference = gpt2.MultiHeadAttention(d, d, cfg["context_length"], 0.0, cfg["n_heads"], qkv_bias)
    expected, got = gpt2.count_parameters(reference), gpt2.count_parameters(attention)
    try:
        with torch.no_grad():
            width = attention(torch.rand(1, 4, d)).shape[-1]
    except Exception as error:  # the learner's module may fail in any way; report it
        return verdict(False, f"calling it on a (1, 4, {d}) batch failed: {error}")
    ok = got == expected and width == d
    return verdict(ok, f"{heads} heads of {d // heads} dims: {got:,} parameters and {width} "
                       f"output dims; GPT-2's 12 heads have {expected:,} and {d}.")


def check_attn_weights_shape(answer: Sequence[int] | None, batch: int = 8, num_heads: int = 12,
                             num_tokens: int = 1024) -> bool:
    """Exercise 4: the shape of MultiHeadAttention's attention-weight tensor: one
    (tokens x tokens) matrix per head per sequence."""
    if answer is None:
        return verdict(False, "give the shape as a tuple of four numbers.")
    expected = (batch, num_heads, num_tokens, num_tokens)
    got = tuple(answer) if isinstance(answer, Sequence) else answer
    return verdict(got == expected, f"queries (b, h, t, hd) @ keys^T (b, h, hd, t) is "
                                    f"{expected}; you said {got}.")


def check_masked_entries(answer: int | None, context_length: int = 1024) -> bool:
    """Exercise 5: how many entries of one causal mask (one head, one sequence) are hidden."""
    if answer is None:
        return verdict(False, "count the entries above the diagonal of an n x n matrix.")
    expected = int(torch.ones(context_length, context_length).triu(diagonal=1).sum())
    return verdict(answer == expected,
                   f"everything above the diagonal: n(n-1)/2 = {expected:,} for n={context_length} "
                   f"(you said {answer}).")
