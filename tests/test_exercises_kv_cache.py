"""The checks of 1_PreTraining/exercises/kv_cache.py accept right answers and reject wrong ones.

The right answers are worked out here another way than the checks do: the cache's size from
the shapes of a real cache, the token passes by counting the rows a model computes, and the
batched generation by a cache written out here and by the library's `gpt2.generate`.
"""
import math

import pytest
import torch

import gpt2
from exercises import kv_cache as ex

# A small GPT with GPT-2's vocabulary, so that the checks' fixed token ids fit it.
SMALL_CONFIG = {**gpt2.GPT_CONFIG_124M, "context_length": 64, "emb_dim": 64, "n_heads": 4,
                "n_layers": 2, "drop_rate": 0.0}


@pytest.fixture(scope="module")
def model() -> gpt2.GPTModel:
    torch.manual_seed(123)
    return gpt2.GPTModel(SMALL_CONFIG).eval()


def cache_mb_from_tensors(size: str) -> float:
    """MB of the library's cache for one sequence of 1,024 tokens, from its tensors' shapes."""
    with torch.device("meta"):  # shapes only, no memory
        big = gpt2.GPTModel({**gpt2.GPT_CONFIG_124M, **gpt2.MODEL_CONFIGS[size]})
    cache = big.new_cache(batch_size=1, max_len=1024)
    return sum(c.keys.nbytes + c.values.nbytes for c in cache) / 1024**2


def test_cache_megabytes() -> None:
    right = {size: cache_mb_from_tensors(size) for size in gpt2.MODEL_CONFIGS}
    assert math.isclose(right["124M"], 72)
    assert ex.check_cache_megabytes(right)
    assert not ex.check_cache_megabytes(None)
    assert not ex.check_cache_megabytes({"124M": right["124M"]})
    assert not ex.check_cache_megabytes({size: mb / 2 for size, mb in right.items()})
    assert not ex.check_cache_megabytes({size: mb * 1024**2 / 1e6 for size, mb in right.items()})
    assert not ex.check_cache_megabytes({size: mb + 1 for size, mb in right.items()})


def rows_through_block0(model: gpt2.GPTModel, run) -> int:
    """Token positions block 0 projects to queries while `run()` generates."""
    rows = []
    hook = model.trf_blocks[0].att.W_query.register_forward_hook(
        lambda module, inputs, output: rows.append(inputs[0].shape[:-1].numel()))
    try:
        run()
    finally:
        hook.remove()
    return sum(rows)


def test_token_passes(model) -> None:
    def uncached(p, n):
        return n * p + n * (n - 1) // 2

    def cached(p, n):
        return p + n - 1

    context = SMALL_CONFIG["context_length"]
    for p, n in ((1, 1), (4, 20), (10, 7)):  # counted on a real model
        idx = torch.zeros(1, p, dtype=torch.long)
        assert rows_through_block0(
            model, lambda: gpt2.generate_text_simple(model, idx, n, context)) == uncached(p, n)
        assert rows_through_block0(model, lambda: gpt2.generate(model, idx, n, context)) \
            == cached(p, n)
    assert ex.check_token_passes(uncached, cached)
    assert ex.check_token_passes(lambda p, n: n * p + n * (n - 1) / 2, cached)  # floats do
    assert not ex.check_token_passes(None, None)
    assert not ex.check_token_passes(lambda p, n: None, cached)
    assert not ex.check_token_passes(lambda p: p, cached)
    assert not ex.check_token_passes(lambda p, n: n * (p + n), cached)
    assert not ex.check_token_passes(uncached, lambda p, n: p + n)
    assert not ex.check_token_passes(uncached, lambda p, n: n)
    assert not ex.check_token_passes(cached, uncached)


def cached_batch(model: gpt2.GPTModel, idx: torch.Tensor, max_new_tokens: int,
                 position_shift: int = 0) -> torch.Tensor:
    """Greedy decoding with a per-layer list of (keys, values), for a batch (b, t); with
    `position_shift`, every new token gets the wrong position embedding."""
    cache = []

    def forward(ids: torch.Tensor, start: int) -> torch.Tensor:
        b, t = ids.shape
        x = model.tok_emb(ids) + model.pos_emb(torch.arange(start, start + t))
        for i, block in enumerate(model.trf_blocks):
            att = block.att
            h = block.norm1(x)
            q, k, v = (layer(h).view(b, t, att.num_heads, att.head_dim).transpose(1, 2)
                       for layer in (att.W_query, att.W_key, att.W_value))
            if i < len(cache):
                k, v = torch.cat([cache[i][0], k], dim=2), torch.cat([cache[i][1], v], dim=2)
                cache[i] = (k, v)
            else:
                cache.append((k, v))
            scores = q @ k.transpose(-2, -1) / att.head_dim ** 0.5
            if t > 1:
                scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1),
                                            float("-inf"))
            context = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, -1)
            x = x + att.out_proj(context)
            x = x + block.ff(block.norm2(x))
        return model.out_head(model.final_norm(x[:, -1]))

    logits = forward(idx, 0)
    for step in range(max_new_tokens):
        next_id = logits.argmax(dim=-1, keepdim=True)
        idx = torch.cat([idx, next_id], dim=1)
        if step < max_new_tokens - 1:
            logits = forward(next_id, idx.shape[1] - 1 + position_shift)
    return idx


def test_batched_cache(model) -> None:
    context = SMALL_CONFIG["context_length"]
    assert ex.check_batched_cache(cached_batch, model)
    assert ex.check_batched_cache(lambda m, idx, n: gpt2.generate(m, idx, n, context), model)
    assert not ex.check_batched_cache(None, model)
    assert not ex.check_batched_cache(lambda m, idx, n: None, model)
    # Right ids, but every step reruns the whole text.
    assert not ex.check_batched_cache(
        lambda m, idx, n: gpt2.generate_text_simple(m, idx, n, context), model)
    assert not ex.check_batched_cache(
        lambda m, idx, n: gpt2.generate(m, idx, n, context, use_cache=False), model)
    # Wrong ids: new tokens at the wrong position; only the first prompt, copied.
    assert not ex.check_batched_cache(lambda m, idx, n: cached_batch(m, idx, n, -1), model)
    assert not ex.check_batched_cache(
        lambda m, idx, n: cached_batch(m, idx[:1], n).expand(len(idx), -1), model)
    # Only the new tokens.
    assert not ex.check_batched_cache(lambda m, idx, n: cached_batch(m, idx, n)[:, -n:], model)
    assert not model.training  # the check leaves the model as it found it
