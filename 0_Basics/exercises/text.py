"""Checks for the exercises of chapter 2, "Working with text".

Each check works out the right answer itself, from gpt2.py or from the text, so the questions
stay correct if the tokenizer or the data loader ever change. A wrong answer gets a hint, never
the answer; a right one gets the reason it is right.
"""
from __future__ import annotations

import functools
import re

import torch

import gpt2
import gpt_download

from . import verdict

# Exercise 1: windows in GPTDatasetV1 over The Verdict with these settings.
WINDOWS_MAX_LENGTH, WINDOWS_STRIDE = 256, 128
# Exercise 2: the word whose GPT-2 pieces the learner lists (note the leading space).
PIECES_WORD = " Gisburn"
# Exercise 3: the data loader whose second batch of targets the learner gives.
LOADER_SETTINGS = {"batch_size": 2, "max_length": 6, "stride": 3, "shuffle": False}
# Exercise 4: the simple tokenizer's split (punctuation, double dash, whitespace) and its extras.
SIMPLE_SPLIT = r'([,.:;?_!"()\']|--|\s)'
SPECIAL_TOKENS = ("<|endoftext|>", "<|unk|>")


@functools.lru_cache(maxsize=1)
def _the_verdict() -> str:
    """The short story the chapter works on (downloaded once, then read from disk)."""
    return gpt_download.fetch_data("the-verdict.txt").read_text(encoding="utf-8")


def _judge(ok: bool, reason: str, hint: str) -> bool:
    """Explain a right answer with `reason`; nudge a wrong one with `hint` (no spoilers)."""
    return verdict(ok, reason if ok else hint)


def check_num_windows(answer: int | None) -> bool:
    """Exercise 1: how many (input, target) windows GPTDatasetV1 cuts from The Verdict."""
    dataset = gpt2.GPTDatasetV1(_the_verdict(), gpt2.get_tokenizer(),
                                WINDOWS_MAX_LENGTH, WINDOWS_STRIDE)
    return _judge(answer == len(dataset),
                  f"{len(dataset.token_ids)} tokens give {len(dataset)} windows of "
                  f"{WINDOWS_MAX_LENGTH} tokens with stride {WINDOWS_STRIDE}.",
                  "a window starts every `stride` tokens and needs max_length + 1 tokens "
                  "(its inputs plus one more for the last target).")


def check_word_pieces(answer: list[str] | None) -> bool:
    """Exercise 2: the pieces GPT-2's tokenizer splits PIECES_WORD into, in order, as strings."""
    tokenizer = gpt2.get_tokenizer()
    expected = [tokenizer.decode([i]) for i in tokenizer.encode(PIECES_WORD)]
    ok = isinstance(answer, (list, tuple)) and list(answer) == expected
    return _judge(ok, f"{PIECES_WORD!r} becomes {expected}, which join back to the word.",
                  "encode the word (with its leading space), then decode each id on its own; "
                  "give a list of strings.")


def check_second_batch_targets(answer) -> bool:
    """Exercise 3: the targets of the second batch of the loader in LOADER_SETTINGS."""
    loader = gpt2.create_dataloader_v1(_the_verdict(), **LOADER_SETTINGS)
    _, expected = list(loader)[1]  # (batch_size, max_length)
    try:
        given = torch.as_tensor(answer) if answer is not None else None
    except (TypeError, ValueError, RuntimeError):
        given = None
    ok = given is not None and given.shape == expected.shape and torch.equal(given.long(), expected)
    return _judge(ok, f"shape {tuple(expected.shape)}; each row is its inputs shifted one token "
                      "to the left.",
                  "iterate over the loader, keep the targets of the second batch, and give them "
                  "as a tensor of token ids.")


def check_vocab_size(answer: int | None) -> bool:
    """Exercise 4: the size of SimpleTokenizerV2's vocabulary built from The Verdict."""
    words = {t.strip() for t in re.split(SIMPLE_SPLIT, _the_verdict()) if t.strip()}
    expected = len(words) + len(SPECIAL_TOKENS)
    return _judge(answer == expected,
                  f"{len(words)} distinct words and punctuation marks plus "
                  f"{len(SPECIAL_TOKENS)} special tokens make {expected}.",
                  "count the distinct tokens of the split text, then add the special tokens.")


def check_embedding_parameters(answer: int | None) -> bool:
    """Exercise 5: weights in GPT-2 124M's token and position embedding tables together."""
    cfg = gpt2.GPT_CONFIG_124M
    expected = (cfg["vocab_size"] + cfg["context_length"]) * cfg["emb_dim"]
    return _judge(answer == expected,
                  f"({cfg['vocab_size']} + {cfg['context_length']}) x {cfg['emb_dim']} "
                  f"= {expected:,}.",
                  "each table has one row of emb_dim numbers per token id or per position; "
                  "take the sizes from gpt2.GPT_CONFIG_124M.")
