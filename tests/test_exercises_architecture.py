"""The checks of chapter 4's exercises: wrong answers are rejected, right ones accepted.

The right answers are worked out here from first principles (shapes of the weight matrices),
independently of the checks, which build the models.
"""
import torch
import torch.nn as nn

import gpt2
from exercises.architecture import (LARGER_SIZES, check_block_params, check_heads_config,
                                    check_memory_mb, check_param_counts, check_separate_dropout,
                                    size_config)


def block_params(cfg: dict) -> dict:
    """Parameters of one transformer block, counted from the shapes of its layers."""
    d = cfg["emb_dim"]
    att = 3 * d * d + 3 * d * cfg["qkv_bias"] + d * d + d  # W_query, W_key, W_value, out_proj
    ff = d * 4 * d + 4 * d + 4 * d * d + d                 # two Linear layers with biases
    return {"att": att, "ff": ff, "block": att + ff + 2 * 2 * d}  # + two LayerNorms


def gpt_params(cfg: dict, tied: bool) -> int:
    d, vocab = cfg["emb_dim"], cfg["vocab_size"]
    embeddings = vocab * d + cfg["context_length"] * d
    head = 0 if tied else vocab * d
    return embeddings + cfg["n_layers"] * block_params(cfg)["block"] + 2 * d + head


def test_block_params() -> None:
    right = block_params(gpt2.GPT_CONFIG_124M)
    assert check_block_params(right)
    assert not check_block_params(None)
    assert not check_block_params({**right, "block": right["att"] + right["ff"]})  # no norms


def test_param_counts() -> None:
    assert check_param_counts({s: gpt_params(size_config(s), tied=True) for s in LARGER_SIZES})
    assert not check_param_counts(None)
    assert not check_param_counts({"355M": 355_000_000})
    assert not check_param_counts({s: gpt_params(size_config(s), tied=False) for s in LARGER_SIZES})


def test_memory_mb() -> None:
    counts = {s: gpt_params(size_config(s), tied=False) for s in LARGER_SIZES}
    assert check_memory_mb({s: n * 4 / 1024**2 for s, n in counts.items()})
    assert not check_memory_mb(None)
    assert not check_memory_mb({s: n * 4 / 1e6 for s, n in counts.items()})
    assert not check_memory_mb({s: n / 1024**2 for s, n in counts.items()})  # forgot 4 bytes


def test_heads_config() -> None:
    cfg = {**gpt2.GPT_CONFIG_124M, "n_heads": 16}
    assert check_heads_config(cfg, 768 // 16)
    assert not check_heads_config(None, None)
    assert not check_heads_config(cfg, 64)  # the 12-head width
    assert not check_heads_config(gpt2.GPT_CONFIG_124M, 64)
    assert not check_heads_config({**gpt2.GPT_CONFIG_124M, "n_heads": 10}, 76)  # 768 % 10 != 0
    assert not check_heads_config({**cfg, "emb_dim": 1024}, 64)


class SeparateDropoutGPT(gpt2.GPTModel):
    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.drop_emb = nn.Dropout(cfg["drop_rate_emb"])
        for block in self.trf_blocks:
            block.att.dropout = nn.Dropout(cfg["drop_rate_attn"])
            block.drop_shortcut = nn.Dropout(cfg["drop_rate_shortcut"])


def test_separate_dropout() -> None:
    cfg = {**gpt2.GPT_CONFIG_124M, "emb_dim": 32, "n_layers": 2, "n_heads": 4,
           "drop_rate_emb": 0.1, "drop_rate_attn": 0.2, "drop_rate_shortcut": 0.3}
    same_rates = {**cfg, "drop_rate_attn": 0.1}
    with torch.device("meta"):
        assert check_separate_dropout(SeparateDropoutGPT(cfg), cfg)
        assert not check_separate_dropout(gpt2.GPTModel(cfg), cfg)  # one rate everywhere
        assert not check_separate_dropout(SeparateDropoutGPT(same_rates), same_rates)
    assert not check_separate_dropout(None, cfg)
