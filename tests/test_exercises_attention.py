"""The checks of chapter 3's exercises reject wrong answers and accept right ones."""
import torch

import gpt2
from exercises.attention import (check_attn_weights_shape, check_gpt2_attention_params,
                                 check_heads_at_equal_params, check_masked_entries,
                                 check_wrapper_d_out)

D = gpt2.GPT_CONFIG_124M["emb_dim"]


def gpt2_attention(num_heads: int, qkv_bias: bool = False, d_out: int = D) -> torch.nn.Module:
    return gpt2.MultiHeadAttention(D, d_out, 1024, 0.0, num_heads, qkv_bias)


def test_wrapper_d_out() -> None:
    assert not check_wrapper_d_out(None)
    assert not check_wrapper_d_out(2)
    assert check_wrapper_d_out(2 // 2)
    assert check_wrapper_d_out(3, num_heads=4, target_dim=12)


def test_gpt2_attention_params() -> None:
    matrices = 4 * D * D
    assert not check_gpt2_attention_params(None, qkv_bias=True)
    assert not check_gpt2_attention_params(matrices, qkv_bias=True)  # forgot the biases
    assert check_gpt2_attention_params(matrices + 4 * D, qkv_bias=True)
    assert check_gpt2_attention_params(matrices + D, qkv_bias=False)
    assert not check_gpt2_attention_params(matrices + 4 * D, qkv_bias=False)


def test_heads_at_equal_params() -> None:
    assert not check_heads_at_equal_params(None)
    assert not check_heads_at_equal_params(gpt2_attention(12))             # GPT-2's own count
    assert not check_heads_at_equal_params(gpt2_attention(8, d_out=512))   # fewer parameters
    assert not check_heads_at_equal_params(torch.nn.Linear(D, D))          # no heads at all
    assert check_heads_at_equal_params(gpt2_attention(24))
    assert check_heads_at_equal_params(gpt2_attention(6, qkv_bias=True))


def test_attn_weights_shape() -> None:
    assert not check_attn_weights_shape(None)
    assert not check_attn_weights_shape((8, 12, 1024, 64))  # that is the context, per head
    assert not check_attn_weights_shape(1024)
    assert check_attn_weights_shape(torch.Size([8, 12, 1024, 1024]))
    queries = torch.rand(2, 3, 5, 4)
    assert check_attn_weights_shape((queries @ queries.transpose(2, 3)).shape,
                                    batch=2, num_heads=3, num_tokens=5)


def test_masked_entries() -> None:
    assert not check_masked_entries(None)
    assert not check_masked_entries(1024 * 1024 // 2)  # the diagonal stays visible
    assert check_masked_entries(1024 * 1023 // 2)
    assert check_masked_entries(15, context_length=6)
