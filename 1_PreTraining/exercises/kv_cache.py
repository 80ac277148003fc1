"""Checks for the exercises of chapter 5d, the KV cache.

The expected answers are computed here from `gpt2.MODEL_CONFIGS`, from formulas, or by running
`gpt2.generate_text_simple` (no cache) on the same model; nothing depends on the weights, so the
checks work for the chapter's 124M model and for the small models the tests use.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

import gpt2

from . import verdict

CACHE_TOKENS = 1024      # exercise 1: one sequence as long as GPT-2's context
BYTES_PER_VALUE = 4      # float32
MB = 1024 * 1024         # 1 MB = 1024 x 1024 bytes, as in chapter 4

# Exercise 2: (prompt tokens P, new tokens N) to try the learner's formulas on. In all of them
# the text stays within a 1,024-token context, so the uncached loop never crops it.
PASS_CASES = ((1, 1), (4, 1), (1, 2), (4, 200), (10, 5), (100, 500), (1, 1024), (512, 513))

# Exercise 3: two prompts of four tokens each, as token ids (GPT-2's tokenizer):
# "Hello, I am" and "Every effort moves you".
BATCH_PROMPT_IDS = ((15496, 11, 314, 716), (6109, 3626, 6100, 345))
BATCH_NEW_TOKENS = 20


def cache_megabytes(n_layers: int, emb_dim: int, tokens: int = CACHE_TOKENS) -> float:
    """MB of keys and values for one sequence: 2 x layers x (heads x head_dim) x tokens x 4
    bytes, where heads x head_dim is emb_dim."""
    return 2 * n_layers * emb_dim * tokens * BYTES_PER_VALUE / MB


def check_cache_megabytes(answer: dict | None) -> bool:
    """Exercise 1: {size: MB} of the KV cache for one sequence of 1,024 tokens in float32, for
    each GPT-2 size in gpt2.MODEL_CONFIGS."""
    sizes = list(gpt2.MODEL_CONFIGS)
    if not isinstance(answer, dict) or any(size not in answer for size in sizes):
        return verdict(False, "fill in a dict {size: MB} for the sizes " + ", ".join(sizes))
    if not all(isinstance(answer[size], numbers.Real) for size in sizes):
        return verdict(False, "every value should be a number of MB")
    expected = {size: cache_megabytes(c["n_layers"], c["emb_dim"])
                for size, c in gpt2.MODEL_CONFIGS.items()}

    def matches(values: dict) -> bool:
        return all(math.isclose(answer[size], values[size], rel_tol=1e-3) for size in sizes)

    if matches(expected):
        largest = expected[sizes[-1]]
        return verdict(True, ", ".join(f"{size}: {mb:g} MB" for size, mb in expected.items())
                             + f". It grows with the batch too: 8 full sequences of the "
                             f"{sizes[-1]} model need {8 * largest / 1024:.1f} GB of cache")
    if matches({size: mb / 2 for size, mb in expected.items()}):
        return verdict(False, "that is half: the cache holds keys *and* values")
    if matches({size: mb * MB / 1e6 for size, mb in expected.items()}):
        return verdict(False, "right bytes, but count 1 MB as 1024 x 1024 bytes, not 10^6")
    if matches({size: mb / gpt2.MODEL_CONFIGS[size]["n_layers"]
                for size, mb in expected.items()}):
        return verdict(False, "that is one layer's cache; every transformer block keeps its own")
    return verdict(False, "per token and layer the cache holds one key and one value per head, "
                          "each head_dim wide: 2 x n_heads x head_dim = 2 x emb_dim numbers of "
                          "4 bytes; multiply by the layers and by 1,024 tokens")


def _formula_values(formula: Callable, cases) -> list | None:
    """formula(P, N) for each case, or None when it cannot be called like that."""
    try:
        return [formula(p, n) for p, n in cases]
    except Exception:  # a learner's half-written function: say so instead of failing
        return None


def check_token_passes(uncached: Callable | None, cached: Callable | None) -> bool:
    """Exercise 2: two functions of P (prompt tokens) and N (new tokens) that count the token
    positions the model computes in greedy generation without a cache (generate_text_simple)
    and with one (the chapter's), when the text fits in the context."""
    if not callable(uncached) or not callable(cached):
        return verdict(False, "give two functions, uncached_passes(P, N) and cached_passes(P, N)")
    got_uncached = _formula_values(uncached, PASS_CASES)
    got_cached = _formula_values(cached, PASS_CASES)
    if got_uncached is None or got_cached is None or \
            not all(isinstance(v, numbers.Real) for v in got_uncached + got_cached):
        return verdict(False, "each function should return a number for whole numbers P >= 1 "
                              "and N >= 1")
    want_uncached = [n * p + n * (n - 1) // 2 for p, n in PASS_CASES]
    want_cached = [p + n - 1 for p, n in PASS_CASES]
    uncached_ok = got_uncached == want_uncached
    cached_ok = got_cached == want_cached
    if uncached_ok and cached_ok:
        ratio = want_uncached[3] / want_cached[3]
        return verdict(True, f"for the chapter's P=4, N=200: {want_uncached[3]:,} token "
                             f"positions without the cache, {want_cached[3]} with it, "
                             f"{ratio:.0f} times fewer")
    if not uncached_ok:
        if got_uncached == [n * p + n * (n + 1) // 2 for p, n in PASS_CASES]:
            return verdict(False, "one token too many in every step: the first step reads only "
                                  "the P prompt tokens, and the last new token is never fed back")
        if got_uncached == [n * (p + n) for p, n in PASS_CASES]:
            return verdict(False, "the steps do not all read P + N tokens: the text grows by "
                                  "one token per step, from P in the first step")
        return verdict(False, "without a cache, step i (counting from 0) runs the whole text, "
                              "P + i tokens, through the model; add up the N steps")
    if got_cached == [p + n for p, n in PASS_CASES]:
        return verdict(False, "one too many with the cache: the last new token is chosen, but "
                              "nothing comes after it, so it never goes through the model")
    if got_cached == [n for p, n in PASS_CASES]:
        return verdict(False, "the prompt goes through the model too, once, all P tokens in one "
                              "pass; then each new token but the last")
    return verdict(False, "with the cache the prompt's P tokens go through once, then each new "
                          "token (except the last, which nothing follows) goes through alone")


def check_batched_cache(generate_fn: Callable | None, model: gpt2.GPTModel) -> bool:
    """Exercise 3: generate_fn(model, idx, max_new_tokens), greedy decoding with a KV cache for
    a batch idx of prompts of equal length (b, P), returning (b, P + max_new_tokens) ids that
    equal generate_text_simple's, while running each token through the model only once."""
    if not callable(generate_fn):
        return verdict(False, "give your function generate_cached_batch(model, idx, "
                              "max_new_tokens)")
    idx = torch.tensor(BATCH_PROMPT_IDS, device=next(model.parameters()).device)
    (b, p), n = idx.shape, BATCH_NEW_TOKENS
    rows = []  # token positions block 0 projects to queries, call by call
    hook = model.trf_blocks[0].att.W_query.register_forward_hook(
        lambda module, inputs, output: rows.append(inputs[0].shape[:-1].numel()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            answer = generate_fn(model, idx.clone(), n)
    finally:
        hook.remove()
        model.train(was_training)
    if not isinstance(answer, torch.Tensor) or tuple(answer.shape) != (b, p + n):
        shape = tuple(answer.shape) if isinstance(answer, torch.Tensor) else type(answer).__name__
        return verdict(False, f"for a ({b}, {p}) batch and {n} new tokens, return a ({b}, "
                              f"{p + n}) tensor, prompts included; got {shape}")
    model.eval()
    try:
        with torch.no_grad():
            expected = gpt2.generate_text_simple(model, idx, n, model.cfg["context_length"])
    finally:
        model.train(was_training)
    answer = answer.to(expected.device, expected.dtype)
    uncached_rows, cached_rows = b * (n * p + n * (n - 1) // 2), b * (p + n - 1)
    if not rows:
        return verdict(False, "your function never ran the model's own layers (block 0's "
                              "att.W_query was not called); use the model's modules")
    if not torch.equal(answer, expected):
        row, col = (answer != expected).nonzero()[0].tolist()
        where = "in the prompt" if col < p else f"at new token {col - p + 1}"
        return verdict(False, f"row {row} differs from generate_text_simple's {where}; check the "
                              "position embedding of each new token (its absolute position), "
                              "that every row has its own keys and values, and that the "
                              "prompt's attention is causal")
    if sum(rows) > b * (p + n):
        return verdict(False, f"the ids are right, but block 0 projected {sum(rows)} token "
                              f"positions; with a cache that is {cached_rows} ({b} rows x "
                              f"{p + n - 1}), without one {uncached_rows}: feed only the new "
                              "token after the prompt")
    return verdict(True, f"the same ids as generate_text_simple for both rows, with {sum(rows)} "
                         f"token positions through block 0 instead of {uncached_rows}")
