"""gpt2_fast: the speed module computes what the plain model computes, with the same parameters.

- `linear`: oneDNN's matmuls, the same values and gradients as F.linear;
- `dropout`: NumPy-drawn masks with the right rate, scale and gradient;
- the training attention: the chapter's formula, dropout on the weights;
- `accelerate`: in place, the same state dict, the same logits and gradients as the plain model;
- `for_generation`: the same tokens in fp32, close logits in bf16 and int8;
- `flush_subnormals`: every thread torch starts after it treats subnormals as zero.
"""
import platform
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import gpt2
import gpt2_fast
from conftest import ONEDNN_USABLE, ROOT, with_backend

needs_onednn = pytest.mark.skipif(not ONEDNN_USABLE, reason="this PyTorch has no oneDNN linear kernel")
CFG = {**gpt2.GPT_CONFIG_124M, "vocab_size": 500, "context_length": 32, "emb_dim": 64,
       "n_heads": 4, "n_layers": 2, "drop_rate": 0.0}


def on_onednn(y: torch.Tensor) -> bool:
    return type(y.grad_fn).__name__ == "OneDNNLinearBackward"


def values_and_grads(fn, x, weight, bias):
    """fn(x, weight, bias) and the gradients of a loss that weighs every output differently."""
    inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
    y = fn(x, weight, bias)
    loss = (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum()
    return [y.detach(), *torch.autograd.grad(loss, inputs)]


def onednn_linear(x, weight, bias):
    return gpt2_fast.linear(x, weight, bias, onednn=True)

# --- linear ---------------------------------------------------------------------------------


@needs_onednn
@pytest.mark.parametrize("shape", [(10, 16), (2, 5, 16), (2, 3, 5, 16)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_equals_f_linear_with_gradients(shape, with_bias):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    weight = torch.randn(24, shape[-1], requires_grad=True)
    bias = torch.randn(24, requires_grad=True) if with_bias else None
    ours = values_and_grads(onednn_linear, x, weight, bias)
    reference = values_and_grads(F.linear, x, weight, bias)
    for a, b in zip(ours, reference):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert on_onednn(onednn_linear(x, weight, bias))  # the path taken, not addmm's


@needs_onednn
def test_onednn_linear_takes_strided_inputs_frozen_weights_and_summed_losses():
    torch.manual_seed(1)
    x = torch.randn(5, 6, 16).transpose(0, 1).requires_grad_()  # not contiguous
    weight = torch.randn(8, 16)  # frozen, as in fine-tuning: no gradient asked for
    bias = torch.randn(8, requires_grad=True)
    for a, b in zip(values_and_grads(onednn_linear, x, weight, bias),
                    values_and_grads(F.linear, x, weight, bias)):
        assert torch.allclose(a, b, atol=1e-5)
    # y.sum() hands back a gradient whose strides are all 0
    dx, = torch.autograd.grad(onednn_linear(x, weight, bias).sum(), [x])
    assert torch.allclose(dx, weight.sum(0).expand_as(x), atol=1e-5)


@needs_onednn
def test_linear_leaves_autocast_other_dtypes_and_narrow_layers_to_pytorch():
    x, weight = torch.randn(4, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn_linear(x, weight, None).dtype == torch.bfloat16
    y = onednn_linear(x.double(), weight.double(), None)
    assert y.dtype == torch.float64 and not on_onednn(y)
    layers = torch.nn.Sequential(torch.nn.Linear(128, 50257), torch.nn.Linear(256, 1024))
    gpt2_fast.accelerate(layers, onednn=True)  # the default min_side: 256
    assert [layer.onednn for layer in layers] == [False, True]  # 128 wide: too narrow
    assert on_onednn(layers[1](torch.randn(1, 256, requires_grad=True)))  # even for one row
    gpt2_fast.accelerate(layers, onednn=False)  # a second call changes the setting
    assert not layers[1].onednn

# --- dropout --------------------------------------------------------------------------------


def test_dropout_keeps_one_minus_p_of_the_values_and_rescales_them():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = gpt2_fast.dropout(x, 0.1)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.003  # 10 standard deviations
    assert torch.allclose(y[kept], torch.tensor(1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient flows through the kept values only
    assert gpt2_fast.dropout(x, 0.1, training=False) is x and gpt2_fast.dropout(x, 0.0) is x
    assert torch.equal(gpt2_fast.dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        gpt2_fast.dropout(x, -0.1)
    assert gpt2_fast.dropout(torch.ones(8, dtype=torch.bfloat16), 0.5).dtype == torch.bfloat16
    layer = gpt2_fast.accelerate(torch.nn.Sequential(torch.nn.Dropout(0.1)))[0]
    assert isinstance(layer, torch.nn.Dropout) and layer.eval()(x) is x


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_has_the_rounded_rate_and_mean_one(p):
    levels = round(p * gpt2_fast.MASK_LEVELS)
    torch.manual_seed(1)
    mask = gpt2_fast.dropout_mask((2000, 1000), levels)
    rate = levels / gpt2_fast.MASK_LEVELS
    assert abs(rate - p) <= 0.5 / gpt2_fast.MASK_LEVELS
    sd = (rate * (1 - rate) / mask.numel()) ** 0.5
    assert abs((mask == 0).float().mean().item() - rate) < 6 * sd
    assert torch.equal(mask.unique(), torch.tensor([0.0, 1 / (1 - rate)]))
    torch.manual_seed(1)  # torch's seed decides the mask, and each draw moves it on
    assert torch.equal(gpt2_fast.dropout_mask((2000, 1000), levels), mask)
    assert not torch.equal(gpt2_fast.dropout_mask((2000, 1000), levels), mask)


def test_dropout_rates_too_close_to_0_or_1_for_the_mask_go_to_pytorch():
    x = torch.ones(100, 100)
    assert torch.allclose(gpt2_fast.dropout(x, 1e-7), x)  # rounds to 0 levels: almost surely all kept
    assert gpt2_fast.dropout(x, 1 - 1e-7).count_nonzero() < 5  # rounds to all 65536 levels

# --- attention ------------------------------------------------------------------------------


def test_training_attention_is_the_formula_with_dropout_on_the_weights():
    """On the CPU, training attention is written out (SDPA cannot drop out there); it must
    equal softmax(q k^T / sqrt(d) + causal mask), its weights dropped out, times v."""
    torch.manual_seed(1)
    plain = gpt2.MultiHeadAttention(32, 32, 16, dropout=0.3, num_heads=4, qkv_bias=True)
    att = gpt2_fast.accelerate(plain).train()
    assert att is plain and type(att) is gpt2_fast.MultiHeadAttention
    x = torch.randn(2, 7, 32)
    torch.manual_seed(5)
    out = att(x)

    torch.manual_seed(5)  # the same draw as the layer's dropout mask
    keep = gpt2_fast.dropout_mask((2, 4, 7, 7), round(0.3 * gpt2_fast.MASK_LEVELS))
    q, k, v = (F.linear(x, layer.weight, layer.bias).view(2, 7, 4, 8).transpose(1, 2)
               for layer in (att.W_query, att.W_key, att.W_value))
    scores = q @ k.transpose(2, 3) / 8 ** 0.5 + torch.full((7, 7), float("-inf")).triu(1)
    weights = torch.softmax(scores, dim=-1) * keep
    expected = F.linear((weights @ v).transpose(1, 2).reshape(2, 7, 32), att.out_proj.weight,
                        att.out_proj.bias)
    assert torch.allclose(out, expected, atol=1e-6)
    # Training multiplies by W_query, W_key and W_value side by side: same gradients.
    grads = [torch.autograd.grad(y.square().sum(), list(att.parameters())) for y in (out, expected)]
    for ours, reference in zip(*grads):
        assert torch.allclose(ours, reference, atol=1e-5)
    att.eval()
    side_by_side = att(x)  # gradients on: the three weights side by side
    assert not torch.allclose(side_by_side, out)  # evaluation drops nothing
    with torch.no_grad():  # without gradients the three are multiplied one by one
        assert torch.allclose(att(x), side_by_side, atol=1e-6)

# --- accelerate -----------------------------------------------------------------------------


def test_accelerate_swaps_in_place_keeping_parameters_and_state_dict():
    torch.manual_seed(0)
    model = gpt2.GPTModel(CFG)
    params = {name: p for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert gpt2_fast.accelerate(model) is model
    assert {name: p for name, p in model.named_parameters()} == params  # the same tensors
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert type(model.out_head) is gpt2_fast.Linear and isinstance(model.out_head, torch.nn.Linear)
    assert type(model.trf_blocks[0].drop_shortcut) is gpt2_fast.Dropout


@pytest.mark.parametrize("backend", ["pytorch", pytest.param("onednn", marks=needs_onednn)])
def test_accelerated_model_has_the_plain_models_loss_and_gradients(backend):
    torch.manual_seed(2)
    start = gpt2.GPTModel(CFG).state_dict()
    batch = torch.randint(0, 500, (2, 33))
    results = []
    for model_backend in ("plain", backend):
        model = gpt2.GPTModel(CFG)
        model.load_state_dict(start)
        model = with_backend(model, model_backend)
        loss = gpt2.calc_loss_batch(batch[:, :-1], batch[:, 1:], model, "cpu")
        loss.backward()
        results.append((loss.item(), {name: p.grad for name, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) < 1e-5
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], rtol=1e-4, atol=1e-6 * grad.abs().max()), name


def test_state_dict_moves_between_plain_and_accelerated_models(tmp_path):
    torch.manual_seed(3)
    fast = gpt2_fast.accelerate(gpt2.GPTModel(CFG)).eval()
    gpt2.save_checkpoint(tmp_path / "fast.pth", fast)
    plain, _ = gpt2.load_checkpoint(tmp_path / "fast.pth")
    idx = torch.randint(0, 500, (2, 20))
    with torch.no_grad():
        assert torch.equal(plain.eval()(idx), fast(idx))
        back = gpt2_fast.accelerate(gpt2.GPTModel(CFG)).eval()
        back.load_state_dict(plain.state_dict())
        assert torch.equal(back(idx), fast(idx))

# --- for_generation -------------------------------------------------------------------------


@pytest.mark.parametrize("onednn", [False, pytest.param(True, marks=needs_onednn)])
def test_fast_copy_for_generation_matches_the_model(onednn):
    """for_generation repacks the weights for speed; fp32 must give the same tokens, the
    smaller formats logits that track fp32's closely, and the original must stay as it was.
    fp32 is packed for oneDNN's kernel or, with PyTorch's default, transposed for addmm."""
    torch.manual_seed(0)
    model = gpt2.GPTModel({**CFG, "vocab_size": 50257, "emb_dim": 256, "n_heads": 4}).eval()
    idx = torch.randint(0, 50257, (2, 10))
    keys = set(model.state_dict())
    with torch.no_grad():
        reference = model(idx)
    fast = gpt2_fast.for_generation(model, "fp32", onednn=onednn)
    assert fast.out_head.kernel == ("onednn" if onednn else "addmm")
    assert gpt2_fast.for_generation(model, "bf16").out_head.kernel == (
        "onednn_packed" if ONEDNN_USABLE else "addmv")
    with torch.no_grad():
        assert torch.allclose(fast(idx), reference, atol=1e-4)
    assert torch.equal(gpt2.generate(fast, idx, 20, CFG["context_length"]),
                       gpt2.generate(model, idx, 20, CFG["context_length"]))
    for dtype in ("bf16", "int8"):
        with torch.no_grad():
            logits = gpt2_fast.for_generation(model, dtype)(idx).float()
        correlation = torch.corrcoef(torch.stack([logits.flatten(), reference.flatten()]))[0, 1]
        assert correlation > 0.99, (dtype, correlation)
    assert set(model.state_dict()) == keys and type(model.trf_blocks[0].att) is gpt2.MultiHeadAttention
    with pytest.raises(ValueError, match="fp32, bf16, int8"):
        gpt2_fast.for_generation(model, "fp8")


FLUSH_CHECK = """
import sys
import numpy as np
inputs = np.full((8, 128, 128), np.float32(1e-40))  # subnormal, made before any flush
sys.path.insert(0, "1_PreTraining")
import pretrain  # everything pretrain.py imports, before its run() flushes
import torch
from pretrain import gpt2_fast
if sys.argv[1] == "flush":
    gpt2_fast.flush_subnormals()
torch.set_num_threads(2)
a = torch.from_numpy(inputs)
print(torch.bmm(a, torch.full_like(a, 1e30)).count_nonzero().item())
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the flush switch is an x86 register")
def test_flush_subnormals_reaches_every_thread_torch_starts_after_it():
    """pretrain.py flushes first thing in run(): importing its modules must not have started
    torch's threads, and the threads started after the call must treat subnormals as zero
    (without the call, 1e-40 x 1e30 x 128 is 1.3e-8 in every output)."""
    def nonzero(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", FLUSH_CHECK, mode], cwd=ROOT, check=True,
                              capture_output=True, text=True)
        return int(done.stdout.split()[-1])

    assert nonzero("plain") == 8 * 128 * 128
    assert nonzero("flush") == 0


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [(0.5, 1.0, "fp32"), (1.0, 0.5, "bf16")])
def test_training_dtype_is_the_faster_matmul_measured(fp32_s, bf16_s, expected):
    """The rule with a fake timer: the format whose matmul took less time wins, flags aside."""
    seconds = {torch.float32: fp32_s, torch.bfloat16: bf16_s}
    choice, rates = gpt2_fast.pick_training_dtype("cpu", lambda dtype, device: seconds[dtype])
    m, k, n = gpt2_fast.TRAINING_MATMUL
    assert choice == expected
    assert rates == {"fp32": 2 * m * k * n / fp32_s / 1e9, "bf16": 2 * m * k * n / bf16_s / 1e9}


def test_pretrain_auto_dtype_says_what_it_measured(monkeypatch, capsys):
    import pretrain
    monkeypatch.setattr(gpt2_fast, "pick_training_dtype",
                        lambda device: ("fp32", {"fp32": 180.0, "bf16": 97.0}))
    assert pretrain.autocast_dtype("auto", torch.device("cpu")) is None
    assert "--dtype auto: fp32 (a training-shaped matmul here: fp32 180, bf16 97 GFLOP/s)" in \
        capsys.readouterr().err
    assert pretrain.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_a_real_matmul_timing_is_quick_and_positive():
    start = time.perf_counter()
    choice, rates = gpt2_fast.pick_training_dtype("cpu")
    assert choice in ("fp32", "bf16") and min(rates.values()) > 0
    assert time.perf_counter() - start < 30  # about half a second on an idle machine


def test_timing_the_matmul_leaves_the_random_stream_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    gpt2_fast.matmul_seconds(torch.float32, "cpu", shape=(8, 8, 8), seconds=0.01)
    assert torch.equal(torch.rand(3), expected)
