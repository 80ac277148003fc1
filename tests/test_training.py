"""Data windows, losses, a short training run, and checkpoints that come back identical."""
import pytest
import torch

import gpt2
from gpt2_fixtures import nest_params, random_tf_variables, tiny_hparams

TINY = {**gpt2.GPT_CONFIG_124M, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2}
TEXT = "Every effort moves you forward, and every step counts. " * 40


def test_windows_are_shifted_by_one_and_counted_like_the_book():
    dataset = gpt2.GPTDatasetV1(TEXT, gpt2.get_tokenizer(), max_length=8, stride=5)
    n_tokens = len(gpt2.get_tokenizer().encode(TEXT))
    assert len(dataset) == len(range(0, n_tokens - 8, 5))
    inputs, targets = dataset[3]
    assert torch.equal(inputs, dataset.token_ids[15:23]) and torch.equal(targets, dataset.token_ids[16:24])
    loader = gpt2.create_dataloader_v1(TEXT, batch_size=4, max_length=8, stride=8, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == y.shape == (4, 8) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="stride"):
        gpt2.GPTDatasetV1(TEXT, gpt2.get_tokenizer(), max_length=8, stride=0)


def test_untrained_loss_is_near_uniform_and_training_lowers_it():
    torch.manual_seed(0)
    model = gpt2.GPTModel(TINY)
    loader = gpt2.create_dataloader_v1(TEXT, batch_size=2, max_length=16, stride=16)
    start = gpt2.calc_loss_loader(loader, model, "cpu")
    assert abs(start - torch.log(torch.tensor(50257.0)).item()) < 1.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train, val, seen = gpt2.train_model_simple(model, loader, loader, optimizer, "cpu", num_epochs=3,
                                               eval_freq=5, eval_iter=2,
                                               start_context="Every effort", tokenizer=gpt2.get_tokenizer())
    assert len(train) == len(val) == len(seen) and seen == sorted(seen)
    assert val[-1] < start - 2.0
    fig = gpt2.plot_losses(torch.linspace(0, 3, len(train)), seen, train, val)
    assert fig.axes[0].get_title()


def test_too_short_text_is_refused_and_empty_loader_gives_nan():
    with pytest.raises(ValueError, match="too few for one window"):
        gpt2.create_dataloader_v1("too short", batch_size=2, max_length=16, stride=16)
    empty = torch.utils.data.DataLoader([], batch_size=1)
    assert torch.isnan(torch.tensor(gpt2.calc_loss_loader(empty, gpt2.GPTModel(TINY), "cpu")))


def test_checkpoint_round_trip_keeps_weights_optimizer_and_tying(tmp_path):
    hparams = tiny_hparams(n_ctx=16, n_embd=32, n_head=4, n_layer=2)
    model = gpt2.GPTModel(gpt2.config_from_hparams(hparams))
    gpt2.load_weights_into_gpt(model, nest_params(random_tf_variables(hparams), 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gpt2.calc_loss_batch(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long),
                         model, "cpu").backward()
    optimizer.step()
    gpt2.save_checkpoint(tmp_path / "m.pth", model, optimizer)

    loaded, optimizer_state = gpt2.load_checkpoint(tmp_path / "m.pth")
    assert loaded.out_head.weight is loaded.tok_emb.weight
    assert gpt2.count_parameters(loaded) == gpt2.count_parameters(model)
    idx = torch.arange(10)[None]
    model.eval(), loaded.eval()
    assert torch.equal(model(idx), loaded(idx))
    restored = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    restored.load_state_dict(optimizer_state)
    assert restored.state_dict()["state"][0]["step"] == 1


def test_weight_loading_names_the_mismatched_parameter():
    hparams = tiny_hparams(n_ctx=16, n_embd=32, n_head=4, n_layer=2)
    params = nest_params(random_tf_variables(hparams), 2)
    params["blocks"][1]["mlp"]["c_fc"]["b"] = params["blocks"][1]["mlp"]["c_fc"]["b"][:-1]
    model = gpt2.GPTModel(gpt2.config_from_hparams(hparams))
    with pytest.raises(ValueError, match=r"blocks\[1\]\.mlp\.c_fc\.b.*\(128,\).*\(127,\)"):
        gpt2.load_weights_into_gpt(model, params)
    with pytest.raises(ValueError, match="qkv_bias=True"):
        gpt2.load_weights_into_gpt(gpt2.GPTModel({**gpt2.config_from_hparams(hparams), "qkv_bias": False}), params)


def test_gpt2_sizes_have_the_published_parameter_counts():
    tied = {"124M": 124_439_808, "355M": 354_823_168}  # with qkv biases, head tied to embedding
    for size, expected in tied.items():
        with torch.device("meta"):
            model = gpt2.GPTModel(gpt2.gpt2_config(size))
        model.out_head.weight = model.tok_emb.weight
        assert gpt2.count_parameters(model) == expected
    with pytest.raises(ValueError, match="124M, 355M"):
        gpt2.gpt2_config("7B")


def test_dropout_keeps_one_minus_p_of_the_values_and_rescales_them():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = gpt2.dropout(x, 0.1)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.003  # 10 standard deviations
    assert torch.allclose(y[kept], torch.tensor(1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient flows through the kept values only
    assert gpt2.dropout(x, 0.1, training=False) is x and gpt2.dropout(x, 0.0) is x
    assert torch.equal(gpt2.dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        gpt2.dropout(x, -0.1)
    assert gpt2.dropout(torch.ones(8, dtype=torch.bfloat16), 0.5).dtype == torch.bfloat16
    layer = gpt2.Dropout(0.1)
    assert isinstance(layer, torch.nn.Dropout) and layer.eval()(x) is x


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_has_the_rounded_rate_and_mean_one(p):
    levels = round(p * gpt2.MASK_LEVELS)
    torch.manual_seed(1)
    mask = gpt2.dropout_mask((2000, 1000), levels)
    rate = levels / gpt2.MASK_LEVELS
    assert abs(rate - p) <= 0.5 / gpt2.MASK_LEVELS
    sd = (rate * (1 - rate) / mask.numel()) ** 0.5
    assert abs((mask == 0).float().mean().item() - rate) < 6 * sd
    assert torch.equal(mask.unique(), torch.tensor([0.0, 1 / (1 - rate)]))
    torch.manual_seed(1)  # torch's seed decides the mask, and each draw moves it on
    assert torch.equal(gpt2.dropout_mask((2000, 1000), levels), mask)
    assert not torch.equal(gpt2.dropout_mask((2000, 1000), levels), mask)


def test_dropout_rates_too_close_to_0_or_1_for_the_mask_go_to_pytorch():
    x = torch.ones(100, 100)
    assert torch.allclose(gpt2.dropout(x, 1e-7), x)  # rounds to 0 levels: almost surely all kept
    assert gpt2.dropout(x, 1 - 1e-7).count_nonzero() < 5  # rounds to all 65536 levels


def test_training_attention_is_the_formula_with_dropout_on_the_weights():
    """On the CPU, training attention is written out (SDPA cannot drop out there); it must
    equal softmax(q k^T / sqrt(d) + causal mask), its weights dropped out, times v."""
    torch.manual_seed(1)
    att = gpt2.MultiHeadAttention(32, 32, 16, dropout=0.3, num_heads=4, qkv_bias=True).train()
    x = torch.randn(2, 7, 32)
    torch.manual_seed(5)
    out = att(x)

    torch.manual_seed(5)  # the same draw as the layer's dropout mask
    keep = gpt2.dropout_mask((2, 4, 7, 7), round(0.3 * gpt2.MASK_LEVELS))
    q, k, v = (layer(x).view(2, 7, 4, 8).transpose(1, 2)
               for layer in (att.W_query, att.W_key, att.W_value))
    scores = q @ k.transpose(2, 3) / 8 ** 0.5 + torch.full((7, 7), float("-inf")).triu(1)
    weights = torch.softmax(scores, dim=-1) * keep
    expected = att.out_proj((weights @ v).transpose(1, 2).reshape(2, 7, 32))
    assert torch.allclose(out, expected, atol=1e-6)
    # Training multiplies by W_query, W_key and W_value side by side: same gradients.
    grads = [torch.autograd.grad(y.square().sum(), list(att.parameters())) for y in (out, expected)]
    for ours, reference in zip(*grads):
        assert torch.allclose(ours, reference, atol=1e-5)
    att.eval()
    assert not torch.allclose(att(x), out)  # evaluation drops nothing
    with torch.no_grad():  # and without gradients, the three are multiplied one by one
        assert torch.allclose(att(x), att.eval()(x), atol=1e-6)
