"""gpt2.linear: oneDNN's matmuls where they are faster, the same values and gradients as F.linear."""
import pytest
import torch
import torch.nn.functional as F

import gpt2
from conftest import ONEDNN_USABLE, use_onednn

pytestmark = pytest.mark.skipif(not ONEDNN_USABLE, reason="this PyTorch has no oneDNN linear kernel")


@pytest.fixture
def onednn(monkeypatch):
    use_onednn(monkeypatch, True)


def on_onednn(y: torch.Tensor) -> bool:
    return type(y.grad_fn).__name__ == "OneDNNLinearBackward"


def values_and_grads(fn, x, weight, bias):
    """fn(x, weight, bias) and the gradients of a loss that weighs every output differently."""
    inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
    y = fn(x, weight, bias)
    loss = (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum()
    return [y.detach(), *torch.autograd.grad(loss, inputs)]


@pytest.mark.parametrize("shape", [(10, 16), (2, 5, 16), (2, 3, 5, 16)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_equals_f_linear_with_gradients(shape, with_bias, onednn):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    weight = torch.randn(24, shape[-1], requires_grad=True)
    bias = torch.randn(24, requires_grad=True) if with_bias else None
    ours = values_and_grads(gpt2.linear, x, weight, bias)
    reference = values_and_grads(F.linear, x, weight, bias)
    for a, b in zip(ours, reference):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert on_onednn(gpt2.linear(x, weight, bias))  # the path taken, not addmm's


def test_onednn_linear_takes_strided_inputs_frozen_weights_and_summed_losses(onednn):
    torch.manual_seed(1)
    x = torch.randn(5, 6, 16).transpose(0, 1).requires_grad_()  # not contiguous
    weight = torch.randn(8, 16)  # frozen, as in fine-tuning: no gradient asked for
    bias = torch.randn(8, requires_grad=True)
    for a, b in zip(values_and_grads(gpt2.linear, x, weight, bias),
                    values_and_grads(F.linear, x, weight, bias)):
        assert torch.allclose(a, b, atol=1e-5)
    # y.sum() hands back a gradient whose strides are all 0
    dx, = torch.autograd.grad(gpt2.linear(x, weight, bias).sum(), [x])
    assert torch.allclose(dx, weight.sum(0).expand_as(x), atol=1e-5)


def test_linear_leaves_autocast_other_dtypes_and_small_matmuls_to_pytorch(onednn, monkeypatch):
    x, weight = torch.randn(4, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gpt2.linear(x, weight).dtype == torch.bfloat16
    y = gpt2.linear(x.double(), weight.double())
    assert y.dtype == torch.float64 and not on_onednn(y)
    monkeypatch.setattr(gpt2, "ONEDNN_MIN_SIDE", 256)  # the default: where oneDNN pays
    assert not on_onednn(gpt2.linear(x, weight))  # an 8 x 16 weight
    assert not on_onednn(gpt2.linear(torch.randn(1, 128), torch.randn(50257, 128)))  # too narrow
    big_x, big_weight = torch.randn(1, 256, requires_grad=True), torch.randn(1024, 256)
    assert on_onednn(gpt2.linear(big_x, big_weight))  # wide enough, even for one row
    monkeypatch.setattr(gpt2, "ONEDNN_MATMUL", False)
    assert not on_onednn(gpt2.linear(big_x, big_weight))


def test_gpt_model_has_the_same_loss_and_gradients_on_either_matmul_library(monkeypatch):
    config = {**gpt2.GPT_CONFIG_124M, "vocab_size": 500, "context_length": 32, "emb_dim": 64,
              "n_heads": 4, "n_layers": 2, "drop_rate": 0.0}
    torch.manual_seed(2)
    start = gpt2.GPTModel(config).state_dict()
    batch = torch.randint(0, 500, (2, 33))
    results = []
    for enabled in (False, True):
        use_onednn(monkeypatch, enabled)
        model = gpt2.GPTModel(config)
        model.load_state_dict(start)
        assert isinstance(model.out_head, torch.nn.Linear)  # the book's layer, keys unchanged
        loss = gpt2.calc_loss_batch(batch[:, :-1], batch[:, 1:], model, "cpu")
        loss.backward()
        results.append((loss.item(), {name: p.grad for name, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) < 1e-5
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], rtol=1e-4, atol=1e-6 * grad.abs().max()), name
