"""The course's CPU speed work, swapped into a gpt2.GPTModel with one call.

`gpt2.py` holds the model as the chapters build it. This module makes the same model train and
generate faster on a CPU, without changing what it computes or its parameters:

    import gpt2, gpt2_fast
    model = gpt2_fast.accelerate(gpt2.GPTModel(cfg))   # in place: same parameters, same state dict
    fast = gpt2_fast.for_generation(model, "bf16")       # a copy for generation only

What `accelerate` swaps in (bench/ measures each; README "Performance" has the figures):
- Linear layers whose fp32 matmuls run on oneDNN on CPUs where PyTorch's default library
  (Intel's MKL) is slow, AMD's among them;
- dropout masks drawn by NumPy's PCG64 generator, 16 bits per value;
- training attention written out step by step on the CPU (PyTorch's fused kernel has no CPU
  dropout), with q, k and v multiplied in one matmul.
Every swapped class is a subclass of the one it replaces, so saving, loading and
`gpt2.load_weights_into_gpt` work on either model.
"""
from __future__ import annotations

import copy
import ctypes
import functools
import platform
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import gpt2

# Layers whose weight has a side under this stay with PyTorch's default: there oneDNN's set-up
# (~15-20 us a call) and its kernels for narrow matrices lost to MKL on an AMD EPYC, while from
# 256 x 256 up it was as fast or faster, even for one row at a time.
ONEDNN_MIN_SIDE = 256
MASK_LEVELS = 2 ** 16  # dropout draws one 16-bit number per value: p is rounded to 1/65536ths

# ---------------------------------------------------------------------------------------------
# The CPU
# ---------------------------------------------------------------------------------------------


@functools.cache
def _cpu_description() -> str:
    """The CPU's vendor, model and instruction-set flags as the system reports them."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text(errors="replace") if cpuinfo.exists() else platform.processor()


def mkl_is_slow_here() -> bool:
    """True on x86 CPUs not made by Intel, where oneDNN multiplies fp32 matrices faster.

    PyTorch's CPU matmuls call Intel's MKL, which gives other makers' CPUs a slower code
    path. oneDNN, also inside PyTorch, chooses its kernels by what the CPU can do. On a 2-core
    AMD EPYC (Zen 5), oneDNN ran GPT-2's fp32 matmuls 1.7-2.4x faster than MKL
    (bench/matmul.py). On Intel CPUs and non-x86 machines, PyTorch's default stays.
    """
    if platform.machine().lower() not in ("x86_64", "amd64") or not onednn_linear_available():
        return False
    return "AuthenticAMD" in _cpu_description()


@functools.cache
def cpu_has_vnni() -> bool:
    """x86 instructions that multiply int8 without the overflow older CPUs risk (_pack_int8)."""
    return any(flag in _cpu_description().split() for flag in ("avx512_vnni", "avx_vnni"))


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear kernel and weight packing (the private
    ops its compiler uses for linear layers on the CPU)."""
    return torch.backends.mkldnn.is_available() and all(
        hasattr(torch.ops.mkldnn, op) for op in ("_linear_pointwise", "_reorder_linear_weight"))


# glibc's dynamic thresholds settle here once the first large blocks have been freed.
GLIBC_STEADY_THRESHOLDS = {"mmap_threshold": 32 << 20, "trim_threshold": 64 << 20}


def tune_malloc(mmap_threshold: int = 1 << 29, trim_threshold: int = 1 << 30) -> bool:
    """Keep freed memory in the process instead of returning it to the system at once (glibc).

    A GPT-2 124M training step allocates several tensors over glibc's 32 MB mmap ceiling
    (logits, the loss's softmax and their gradients); each is mapped fresh and faulted in page
    by page, ~314,000 page faults a step, then handed back. Raising the mmap and trim
    thresholds lets malloc reuse that memory (bench/malloc.py measures it). It is process-wide,
    so only a script that owns its process (pretrain.py, the fine-tuning scripts) calls it.
    Returns whether it could (Linux with glibc only).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(
        libc.mallopt(m_trim_threshold, trim_threshold))


def flush_subnormals() -> bool:
    """Treat floats below 1.2e-38 (subnormals) as zero, in every thread torch starts from here on.

    A model trained on real text soon has attention weights of 1e-40 and less (softmax of
    scores far below the row's largest), and x86 cores multiply such inputs through a slow
    microcode path: a batched matmul with 1% of them takes ~3x as long, and GPT-2 124M's
    attention products took twice as long after 70 steps on tiny Shakespeare. Nothing a
    training run learns lives below 1e-38. The switch is a per-thread
    CPU register that new threads copy from the thread that starts them, so call this before
    torch's first multi-threaded op: threads already running keep the old setting. It is
    process-wide, so only a script that owns its process calls it. Returns whether the CPU
    has the switch (x86 with SSE3).
    """
    return torch.set_flush_denormal(True)



# A training-shaped matmul: 1,024 tokens through GPT-2 124M's first feed-forward layer.
TRAINING_MATMUL = (1024, 768, 3072)


def matmul_seconds(dtype: torch.dtype, device: torch.device | str = "cpu",
                   shape: tuple[int, int, int] = TRAINING_MATMUL, seconds: float = 0.25) -> float:
    """Seconds one (m x k) @ (k x n) matmul takes in `dtype`: the median over as many runs as
    fit in about `seconds`, after one warm-up run."""
    m, k, n = shape
    rng = torch.Generator().manual_seed(0)  # its own: the caller's random stream stays as it was
    a = torch.randn(m, k, generator=rng).to(device, dtype)
    b = torch.randn(k, n, generator=rng).to(device, dtype)
    times, deadline = [], time.perf_counter() + seconds
    a @ b  # warm-up: first-call set-up is not the steady rate
    while not times or time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def pick_training_dtype(device: torch.device | str = "cpu",
                        time_matmul: Callable[..., float] = matmul_seconds
                        ) -> tuple[str, dict[str, float]]:
    """"bf16" or "fp32", whichever multiplies a training-shaped matrix faster here, measured
    (under a second) rather than read from CPU flags: some CPUs that report bf16 instructions
    multiply bf16 at half their fp32 rate. Returns (choice, GFLOP/s of each)."""
    m, k, n = TRAINING_MATMUL
    rates = {name: 2 * m * k * n / time_matmul(dtype, device) / 1e9
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return ("bf16" if rates["bf16"] > rates["fp32"] else "fp32"), rates

# ---------------------------------------------------------------------------------------------
# Matmuls on oneDNN
# ---------------------------------------------------------------------------------------------


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           onednn: bool = False) -> torch.Tensor:
    """F.linear (x @ weight.T + bias), on oneDNN when `onednn` and the inputs allow it: fp32
    tensors on the CPU, not under autocast (which sends its bf16 matmuls to oneDNN itself)."""
    if (onednn and x.dtype == weight.dtype == torch.float32 and weight.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")):
        return OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


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
    """nn.Linear computed by `linear` above; `onednn` is decided once, by `accelerate`."""

    onednn = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.onednn)


def linears_side_by_side(layers: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight (sum of outs, in) and bias of one Linear computing all of `layers` at once, its
    output their outputs concatenated. A single layer's own tensors come back as they are:
    torch.cat would copy them (GPT-2 124M's head alone is 147 MiB)."""
    if len(layers) == 1:
        return layers[0].weight, layers[0].bias
    bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
    return torch.cat([layer.weight for layer in layers]), bias


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


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


DropoutFn = Callable[[torch.Tensor, float, bool], torch.Tensor]


class Dropout(nn.Dropout):
    """nn.Dropout computed by `dropout_fn` (by default `dropout` above): same p, same train/eval
    behaviour."""

    dropout_fn: DropoutFn = staticmethod(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout_fn(x, self.p, self.training)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


class MultiHeadAttention(gpt2.MultiHeadAttention):
    """gpt2.MultiHeadAttention with faster projections and, training on the CPU, attention
    written out with our dropout. `W_qkv` (set by `accelerate`) is None, or the three
    projections fused in copies made by `for_generation`."""

    dropout_fn: DropoutFn = staticmethod(dropout)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values, each (b, heads, t, head_dim).

        One matrix multiply with the three weights side by side beats three (~5% of a
        training step). Putting them side by side copies them, though, which costs more than
        it saves when a step is a single token, so only training does it (and the copies of
        `for_generation` store them fused once and for all).
        """
        if self.W_qkv is not None:
            return self._split_qkv(self.W_qkv(x))
        if torch.is_grad_enabled() and isinstance(self.W_query, nn.Linear):  # not LoRA-wrapped
            weight, bias = linears_side_by_side([self.W_query, self.W_key, self.W_value])
            return self._split_qkv(linear(x, weight, bias, self.W_query.onednn))
        return super().project(x)

    def _split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = qkv.shape  # (b, t, 3 * d_out) -> 3 x (b, heads, t, head_dim)
        qkv = qkv.view(b, t, 3, self.num_heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               past: int = 0) -> torch.Tensor:
        """Chapter 3's causal attention, step by step, when training with dropout on the CPU.

        PyTorch's fused kernel cannot apply dropout on the CPU, so there it falls back to these
        same steps, plus extra passes over the (t, t) scores and PyTorch's slower dropout mask.
        """
        if not (self.training and self.dropout.p and past == 0 and queries.device.type == "cpu"):
            return super().attend(queries, keys, values, past)
        b, heads, t, head_dim = queries.shape
        q, k, v = (x.reshape(b * heads, t, head_dim) for x in (queries, keys, values))
        future = torch.full((t, t), float("-inf"), device=q.device).triu_(1)  # 0 on and below
        # future + q k^T / sqrt(head_dim) in one call; adding -inf masks like masked_fill does
        scores = torch.baddbmm(future, q, k.transpose(1, 2), alpha=head_dim ** -0.5)  # (b*heads, t, t)
        weights = self.dropout_fn(torch.softmax(scores, dim=-1), self.dropout.p, True)
        return (weights @ v).view(b, heads, t, head_dim)

# ---------------------------------------------------------------------------------------------
# One call: accelerate
# ---------------------------------------------------------------------------------------------


def accelerate(model: nn.Module, onednn: bool | None = None, min_side: int = ONEDNN_MIN_SIDE,
               dropout_fn: DropoutFn = dropout) -> nn.Module:
    """Swap this module's faster twins into `model`, in place, and return it.

    Every nn.Linear, nn.Dropout and gpt2.MultiHeadAttention becomes the subclass above: the
    parameters, buffers and state-dict keys stay exactly as they were. `onednn` (default: on
    where MKL is slow, see `mkl_is_slow_here`) sends fp32 CPU matmuls of weights at least
    `min_side` wide to oneDNN; `dropout_fn(x, p, training)` draws the dropout masks. Calling it
    again changes these settings.
    """
    onednn = mkl_is_slow_here() if onednn is None else onednn and onednn_linear_available()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.__class__ = Linear
            module.onednn = onednn and min(module.weight.shape) >= min_side
        elif isinstance(module, nn.Dropout):
            module.__class__ = Dropout
            module.dropout_fn = dropout_fn
        elif isinstance(module, gpt2.MultiHeadAttention):
            if not isinstance(module, MultiHeadAttention):
                module.W_qkv = None
            module.__class__ = MultiHeadAttention
            module.dropout_fn = dropout_fn
    return model

# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------

# Number formats a model can be prepared to generate in (for_generation).
GENERATION_DTYPES = ("fp32", "bf16", "int8")  # the number formats for_generation offers


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

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: str,
                 onednn: bool = False):
        super().__init__()  # weight: (out, in) as in nn.Linear
        weight = weight.detach().float()
        bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float()
        self.kernel = _generation_kernel(weight, dtype, onednn)
        if dtype == "bf16":
            weight, bias = weight.to(torch.bfloat16), bias.to(torch.bfloat16)
        if self.kernel == "fbgemm":
            self.packed = _pack_int8(weight, bias)
            self.reduce_range = not cpu_has_vnni()
            return
        self.register_buffer("bias", bias)  # zeros for a layer without one
        if self.kernel == "onednn_packed":  # an opaque oneDNN tensor, so not a buffer
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
            return
        if self.kernel == "addmm":
            weight = weight.t().contiguous()  # (in, out)
        self.register_buffer("weight", weight)

    @classmethod
    def from_linears(cls, layers: list[nn.Linear], dtype: str, onednn: bool) -> PackedLinear:
        """One layer computing all of `layers` side by side (outputs concatenated)."""
        return cls(*linears_side_by_side(layers), dtype, onednn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # (b * t, in)
        if self.kernel == "addmm":
            out = torch.addmm(self.bias, rows, self.weight)
        elif self.kernel == "onednn":
            out = _onednn_mm(rows, self.weight, self.bias)
        elif self.kernel == "onednn_packed":
            out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        elif self.kernel == "fbgemm":
            out = torch.ops.quantized.linear_dynamic(rows, self.packed, reduce_range=self.reduce_range)
        elif len(rows) == 1:
            out = torch.addmv(self.bias, self.weight, rows[0]).unsqueeze(0)
        else:
            out = F.linear(rows, self.weight, self.bias)
        return out.view(*x.shape[:-1], out.shape[-1])


def _generation_kernel(weight: torch.Tensor, dtype: str, onednn: bool) -> str:
    """Which of PackedLinear's kernels multiplies by `weight` (out, in) fastest in `dtype`."""
    if dtype == "int8":
        return "fbgemm"
    if dtype == "bf16":
        return "onednn_packed" if onednn_linear_available() and weight.device.type == "cpu" else "addmv"
    fp32_onednn = onednn and weight.device.type == "cpu" and min(weight.shape) >= ONEDNN_MIN_SIDE
    return "onednn" if fp32_onednn else "addmm"


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


def for_generation(model: gpt2.GPTModel, dtype: str = "fp32", onednn: bool | None = None
                   ) -> gpt2.GPTModel:
    """A copy of `model` made only to generate fast, in "fp32", "bf16" or "int8".

    Each attention layer's W_query, W_key and W_value become one fused matrix and every linear
    layer a PackedLinear in the layout that multiplies fastest; with bf16 the rest of the model
    (embeddings, norms, KV cache) runs in bf16 too, with int8 in fp32. The copy cannot be
    trained and its state dict has other keys, which is why it is a separate copy: the model
    you train, save and load keeps the book's layers and names. `onednn` as in `accelerate`.
    """
    if dtype not in GENERATION_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(GENERATION_DTYPES)}, got {dtype!r}")
    if dtype == "int8" and model.tok_emb.weight.device.type != "cpu":
        raise ValueError("int8 generation uses CPU kernels; move the model to the CPU first")
    onednn = mkl_is_slow_here() if onednn is None else onednn and onednn_linear_available()
    fast = accelerate(copy.deepcopy(model).eval().requires_grad_(False), onednn)
    for block in fast.trf_blocks:  # packed from the fp32 weights, before any rounding
        att, ff = block.att, block.ff.layers
        att.W_qkv = PackedLinear.from_linears([att.W_query, att.W_key, att.W_value], dtype, onednn)
        del att.W_query, att.W_key, att.W_value
        att.out_proj = PackedLinear.from_linears([att.out_proj], dtype, onednn)
        ff[0], ff[2] = (PackedLinear.from_linears([ff[i]], dtype, onednn) for i in (0, 2))
    fast.out_head = PackedLinear.from_linears([fast.out_head], dtype, onednn)
    return fast.to(torch.bfloat16) if dtype == "bf16" else fast
