"""The checks of 0_Basics/exercises/text.py accept right answers and reject wrong or missing ones."""
import re

import pytest
import torch

import gpt2
import gpt_download
from exercises import text as ex


@pytest.fixture(scope="module")
def verdict_text() -> str:
    return gpt_download.fetch_data("the-verdict.txt").read_text(encoding="utf-8")


def test_num_windows(verdict_text: str) -> None:
    n_tokens = len(gpt2.get_tokenizer().encode(verdict_text))
    # Starts 0, stride, 2*stride, ... while a full window plus one target token still fits.
    right = (n_tokens - ex.WINDOWS_MAX_LENGTH - 1) // ex.WINDOWS_STRIDE + 1
    assert ex.check_num_windows(right)
    assert not ex.check_num_windows(right + 1)
    assert not ex.check_num_windows(n_tokens // ex.WINDOWS_STRIDE)
    assert not ex.check_num_windows(None)


def test_word_pieces() -> None:
    tokenizer = gpt2.get_tokenizer()
    right = [tokenizer.decode_single_token_bytes(i).decode("utf-8")
             for i in tokenizer.encode(ex.PIECES_WORD)]
    assert "".join(right) == ex.PIECES_WORD
    assert ex.check_word_pieces(right)
    assert not ex.check_word_pieces([ex.PIECES_WORD])
    assert not ex.check_word_pieces(right[::-1])
    assert not ex.check_word_pieces("".join(right))
    assert not ex.check_word_pieces(None)


def test_second_batch_targets(verdict_text: str) -> None:
    batch, length, stride = (ex.LOADER_SETTINGS[k] for k in ("batch_size", "max_length", "stride"))
    ids = torch.tensor(gpt2.get_tokenizer().encode(verdict_text))
    starts = [(batch + row) * stride for row in range(batch)]  # rows of the second batch
    right = torch.stack([ids[s + 1:s + 1 + length] for s in starts])
    assert ex.check_second_batch_targets(right)
    assert ex.check_second_batch_targets(right.tolist())
    assert not ex.check_second_batch_targets(right + 1)
    assert not ex.check_second_batch_targets(torch.stack([ids[s:s + length] for s in starts]))
    assert not ex.check_second_batch_targets(right[0])
    assert not ex.check_second_batch_targets("not a tensor")
    assert not ex.check_second_batch_targets(None)


def test_vocab_size(verdict_text: str) -> None:
    words = set(re.findall(r'--|[,.:;?_!"()\']|(?:(?!--)[^\s,.:;?_!"()\'])+', verdict_text))
    right = len(words) + 2  # <|endoftext|> and <|unk|>
    assert ex.check_vocab_size(right)
    assert not ex.check_vocab_size(len(words))
    assert not ex.check_vocab_size(None)


def test_embedding_parameters() -> None:
    cfg = gpt2.GPT_CONFIG_124M
    token_table = torch.nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
    position_table = torch.nn.Embedding(cfg["context_length"], cfg["emb_dim"])
    right = token_table.weight.numel() + position_table.weight.numel()
    assert ex.check_embedding_parameters(right)
    assert not ex.check_embedding_parameters(cfg["vocab_size"] * cfg["emb_dim"])
    assert not ex.check_embedding_parameters(None)
