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
    bottom, top = fig.axes
    assert list(bottom.lines[0].get_ydata()) == train and list(bottom.lines[1].get_ydata()) == val
    assert list(top.lines[0].get_xdata()) == seen and top.get_xlabel() == "Tokens seen"


def test_too_short_text_is_refused_and_empty_loader_gives_nan():
    with pytest.raises(ValueError, match="too few for a window"):
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


def book_state_dict(model: gpt2.GPTModel) -> dict:
    """What the book's GPTModel saves: our keys plus each attention layer's causal-mask buffer."""
    state = dict(model.state_dict())
    n = model.cfg["context_length"]
    for i in range(model.cfg["n_layers"]):
        state[f"trf_blocks.{i}.att.mask"] = torch.triu(torch.ones(n, n), diagonal=1)
    return state


def test_the_books_checkpoints_load_with_their_mask_buffers_ignored_once(tmp_path):
    torch.manual_seed(0)
    model = gpt2.GPTModel(TINY).eval()
    torch.save(book_state_dict(model), tmp_path / "model.pth")  # the book: weights alone
    with pytest.raises(ValueError, match="pass the config"):
        gpt2.load_checkpoint(tmp_path / "model.pth")
    with pytest.warns(UserWarning, match="ignored the 2 causal-mask buffers") as caught:
        loaded, optimizer_state = gpt2.load_checkpoint(tmp_path / "model.pth", cfg=TINY)
    assert len(caught) == 1 and optimizer_state is None
    idx = torch.arange(12)[None]
    assert torch.equal(loaded.eval()(idx), model(idx))
    plain = gpt2.GPTModel(TINY)  # the plain load_state_dict path of the notebooks
    with pytest.warns(UserWarning, match="causal-mask"):
        plain.load_state_dict(book_state_dict(model))
    with pytest.raises(RuntimeError, match="Unexpected key"):  # any other stray key still fails
        plain.load_state_dict({**model.state_dict(), "trf_blocks.0.att.masks": torch.ones(1)})


def test_a_file_that_is_no_checkpoint_gets_a_clear_message(tmp_path):
    text = tmp_path / "README.md"
    text.write_text("# not a checkpoint\n")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint") as caught:
        gpt2.load_checkpoint(text)
    assert "weights_only=False" not in str(caught.value)
    torch.save({"config": TINY, "model_state_dict": {"fc.weight": torch.ones(2)}}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="no GPTModel weights"):
        gpt2.load_checkpoint(tmp_path / "x.pth")


@pytest.mark.parametrize("accelerated", [False, True], ids=["plain", "accelerated"])
def test_the_books_printed_numbers_come_out_with_seed_123(accelerated):
    """Chapter 4's greedy ids for "Hello, I am" and chapter 5's losses before training, as the
    book prints them: the layers are built in the book's order with PyTorch's default init."""
    import gpt2_fast
    import gpt_download

    prepare = gpt2_fast.accelerate if accelerated else (lambda model: model)
    torch.manual_seed(123)
    model = prepare(gpt2.GPTModel(gpt2.GPT_CONFIG_124M)).eval()
    encoded = gpt2.text_to_token_ids("Hello, I am", gpt2.get_tokenizer())
    out = gpt2.generate_text_simple(model, encoded, 6, 1024)
    assert out[0, 4:].tolist() == [27018, 24086, 47843, 30961, 42348, 7267]

    config = {**gpt2.GPT_CONFIG_124M, "context_length": 256}
    torch.manual_seed(123)
    model = prepare(gpt2.GPTModel(config)).eval()
    text = gpt_download.fetch_data("the-verdict.txt").read_text(encoding="utf-8")
    split = int(0.9 * len(text))
    torch.manual_seed(123)
    train_loader = gpt2.create_dataloader_v1(text[:split], batch_size=2, max_length=256, stride=256)
    val_loader = gpt2.create_dataloader_v1(text[split:], batch_size=2, max_length=256, stride=256,
                                           drop_last=False, shuffle=False)
    torch.manual_seed(123)
    with torch.no_grad():
        train_loss = gpt2.calc_loss_loader(train_loader, model, "cpu")
        val_loss = gpt2.calc_loss_loader(val_loader, model, "cpu")
    assert (round(train_loss, 4), round(val_loss, 4)) == (10.9876, 10.9811)


def test_init_weights_draws_like_gpt2_and_scales_the_residual_projections():
    torch.manual_seed(0)
    cfg = {**gpt2.GPT_CONFIG_124M, "emb_dim": 256, "n_heads": 4, "n_layers": 8}
    model = gpt2.init_weights(gpt2.GPTModel(cfg))
    assert model.out_head.weight is model.tok_emb.weight
    block = model.trf_blocks[0]
    assert block.att.W_query.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for projection in (block.att.out_proj, block.ff.layers[2]):  # add into the residual stream
        assert projection.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)  # 1/sqrt(16)
        assert not projection.bias.any()
    untied = gpt2.init_weights(gpt2.GPTModel(cfg), tie_head=False)
    assert untied.out_head.weight is not untied.tok_emb.weight


def test_random_base_model_is_the_course_model_before_pretraining_and_seeded():
    models = []
    for _ in range(2):
        torch.manual_seed(5)
        models.append(gpt2.load_base_model("random"))
    a, b = models
    assert a.cfg == {**gpt2.COURSE_MODEL_CONFIG, "drop_rate": 0.0}
    assert a.out_head.weight is a.tok_emb.weight
    assert torch.equal(a.trf_blocks[3].ff.layers[0].weight, b.trf_blocks[3].ff.layers[0].weight)
