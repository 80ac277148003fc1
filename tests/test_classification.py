"""Chapter 6: the spam data, SpamDataset, the classifier's loss, accuracy, training, LoRA, and
the two scripts' answers to bad input. Models are tiny (2 layers, 32 wide) to keep this fast."""
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import classify
import finetune_classifier
import gpt2
import gpt_download
import spam

TINY = {**gpt2.GPT_CONFIG_124M, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
        "drop_rate": 0.0}


def tiny_classifier(trainable: str = "last-block", seed: int = 0) -> gpt2.GPTModel:
    torch.manual_seed(seed)
    return spam.prepare_classifier(gpt2.GPTModel(TINY), trainable, lora_rank=2, lora_alpha=4)


def write_csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    import pandas as pd

    pd.DataFrame(rows, columns=["Text", "Label"]).to_csv(path, index=False)
    return path

# --- data -----------------------------------------------------------------------------------


def test_spam_splits_are_balanced_70_10_20(tmp_path: Path) -> None:
    import pandas as pd

    paths = spam.prepare_spam_splits(tmp_path)
    splits = {name: pd.read_csv(path, keep_default_na=False) for name, path in paths.items()}
    assert {name: len(df) for name, df in splits.items()} == {
        "train": 1045, "validation": 149, "test": 300}
    labels = pd.concat(splits.values())["Label"]
    assert labels.value_counts().to_dict() == {0: 747, 1: 747}
    assert gpt_download.sha256_of(tmp_path / spam.SPAM_FILE) == spam.SPAM_SHA256


def test_the_collection_is_read_without_quote_handling(tmp_path: Path) -> None:
    path = tmp_path / "sms.tsv"
    path.write_text('ham\tShe said "hi\nspam\tWIN now\nham\tok" then\n')
    df = spam.load_spam_collection(path)
    assert df["Text"].tolist() == ['She said "hi', "WIN now", 'ok" then']


def test_a_line_without_its_message_is_named(tmp_path: Path) -> None:
    path = tmp_path / "sms.tsv"
    path.write_text("ham\thello\nspam\n")
    with pytest.raises(ValueError, match="line 2: expected 'ham' or 'spam', a tab"):
        spam.load_spam_collection(path)


def test_extraction_refuses_members_outside_the_folder(tmp_path: Path) -> None:
    for name in ("../evil.txt", "/tmp/evil.txt", "a/../../evil.txt"):
        archive = tmp_path / "bad.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("fine.txt", "ok")
            zf.writestr(name, "escaped")
        with pytest.raises(ValueError, match="outside"):
            gpt_download.safe_extract(archive, tmp_path / "out")
        assert not (tmp_path / "out" / "fine.txt").exists()  # nothing written before the check
    assert not (tmp_path / "evil.txt").exists()


def test_a_corrupt_zip_says_what_to_do(tmp_path: Path) -> None:
    archive = tmp_path / "cut.zip"
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a readable zip file.*delete it"):
        gpt_download.safe_extract(archive, tmp_path / "out")


def test_spam_dataset_pads_and_truncates(tmp_path: Path) -> None:
    tokenizer = gpt2.get_tokenizer()
    texts = ["Hello there", "Win a free prize now, call 0800", "ok"]
    path = write_csv(tmp_path / "train.csv", [(t, i % 2) for i, t in enumerate(texts)])
    ids = [tokenizer.encode(t) for t in texts]
    longest = max(len(x) for x in ids)

    dataset = spam.SpamDataset(path, tokenizer)
    assert dataset.max_length == longest and len(dataset) == 3
    for (inputs, label), expected, i in zip(dataset, ids, range(3)):
        assert inputs.tolist() == expected + [50256] * (longest - len(expected))
        assert label.item() == i % 2

    short = spam.SpamDataset(path, tokenizer, max_length=2)
    assert [x.tolist() for x, _ in short] == [x[:2] + [50256] * (2 - len(x[:2])) for x in ids]


def test_spam_dataset_names_a_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("Message,Label\nhello,0\n")
    with pytest.raises(ValueError, match="no column Text"):
        spam.SpamDataset(path, gpt2.get_tokenizer())

# --- loss, accuracy, training -------------------------------------------------------------


class LastTokenParity(nn.Module):
    """Predicts class (last token id) % 2 with certainty: a model whose accuracy we know."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        parity = idx % 2
        return torch.stack([1 - parity, parity], dim=-1).float()


def test_accuracy_on_a_hand_made_loader() -> None:
    batches = [(torch.tensor([[9, 1], [9, 2]]), torch.tensor([1, 0])),   # both right
               (torch.tensor([[9, 3], [9, 4]]), torch.tensor([0, 0])),   # one right
               (torch.tensor([[1, 8], [2, 7]]), torch.tensor([1, 0]))]   # both wrong
    model = LastTokenParity()
    assert spam.calc_accuracy_loader(batches, model, "cpu") == pytest.approx(3 / 6)
    assert spam.calc_accuracy_loader(batches, model, "cpu", num_batches=1) == 1.0
    assert spam.calc_accuracy_loader(batches, model, "cpu", num_batches=2) == pytest.approx(3 / 4)


def test_metrics_of_known_predictions() -> None:
    predictions = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1])
    labels = torch.tensor([1, 1, 0, 1, 0, 0, 0, 0])
    metrics = spam.classification_metrics(predictions, labels)
    assert metrics["confusion_matrix"] == [[3, 2], [1, 2]]
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["precision"] == pytest.approx(2 / 4) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_the_loss_reads_only_the_last_token() -> None:
    model = tiny_classifier()
    inputs, labels = torch.randint(0, 50257, (3, 10)), torch.tensor([0, 1, 1])
    expected = nn.functional.cross_entropy(model(inputs)[:, -1, :], labels)
    assert spam.calc_loss_batch_classifier(inputs, labels, model, "cpu").item() == \
        pytest.approx(expected.item())


def test_frozen_parameters_get_no_gradient() -> None:
    model = tiny_classifier("last-block")
    assert model.out_head.weight.shape == (2, TINY["emb_dim"])
    spam.calc_loss_batch_classifier(torch.randint(0, 50257, (2, 8)), torch.tensor([0, 1]),
                                    model, "cpu").backward()
    trainable = ("trf_blocks.1.", "final_norm.", "out_head.")
    for name, param in model.named_parameters():
        if name.startswith(trainable):
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(1)
    inputs = torch.randint(0, 1000, (32, 12))
    labels = (inputs[:, 3] > 500).long()  # a rule the model can find
    loader = [(inputs[i:i + 8], labels[i:i + 8]) for i in range(0, 32, 8)]
    model = tiny_classifier("all")
    before = gpt2.calc_loss_loader(loader, model, "cpu", loss_batch=spam.calc_loss_batch_classifier)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = spam.train_classifier_simple(model, loader, loader, optimizer, "cpu", num_epochs=5,
                                           eval_freq=4, eval_iter=4)
    after = gpt2.calc_loss_loader(loader, model, "cpu", loss_batch=spam.calc_loss_batch_classifier)
    assert after < 0.7 * before
    train_losses, val_losses, train_accs, val_accs, examples_seen = history
    assert len(train_losses) == len(val_losses) == 5 and len(train_accs) == 5
    assert examples_seen == 5 * 32 and train_accs[-1] > 0.5

# --- LoRA -----------------------------------------------------------------------------------


def test_lora_starts_as_the_frozen_linear_and_only_a_and_b_train() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    linear.requires_grad_(False)
    wrapped = gpt2.LinearWithLoRA(linear, rank=4, alpha=2.0)
    x = torch.randn(5, 16)
    assert torch.equal(wrapped(x), linear(x))  # B starts at zero
    wrapped(x).pow(2).sum().backward()
    assert linear.weight.grad is None and linear.bias.grad is None
    assert wrapped.lora.B.grad.abs().sum() > 0  # dL/dB = A^T x^T dy is not zero
    assert torch.count_nonzero(wrapped.lora.A.grad) == 0  # dL/dA = x^T dy B^T, and B = 0


def test_merged_lora_weight_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    wrapped = gpt2.LinearWithLoRA(nn.Linear(16, 8), rank=4, alpha=2.0)
    with torch.no_grad():
        wrapped.lora.B.normal_()  # as if trained
    x = torch.randn(5, 16)
    torch.testing.assert_close(wrapped.merged()(x), wrapped(x), rtol=1e-5, atol=1e-5)


def test_lora_model_trains_only_its_adapters() -> None:
    model = tiny_classifier("lora")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith(("lora.A", "lora.B")) for name in trainable)
    n_linear = 2 * 6 + 1  # q, k, v, out_proj, two feed-forward layers per block; the head
    assert len(trainable) == 2 * n_linear
    inputs = torch.randint(0, 50257, (2, 8))
    with torch.no_grad():
        before = model(inputs)
    assert torch.equal(gpt2.merge_lora(model)(inputs), before)  # B = 0: merging changes nothing

# --- saving and the scripts ---------------------------------------------------------------


def test_classifier_saves_and_loads(tmp_path: Path) -> None:
    model = tiny_classifier("lora")
    inputs = torch.randint(0, 50257, (2, 8))
    model.eval()
    with torch.no_grad():
        expected = model(inputs)
    spam.save_classifier(tmp_path / "c.pth", model, max_length=20)
    loaded, max_length = spam.load_classifier(tmp_path / "c.pth")
    assert max_length == 20
    torch.testing.assert_close(loaded(inputs), expected)


def test_a_language_model_is_not_taken_for_a_classifier(tmp_path: Path) -> None:
    gpt2.save_checkpoint(tmp_path / "lm.pth", gpt2.GPTModel(TINY))
    with pytest.raises(ValueError, match="is a language model .* not a classifier"):
        spam.load_classifier(tmp_path / "lm.pth")
    torch.save(tiny_classifier().state_dict(), tmp_path / "book.pth")
    with pytest.raises(ValueError, match="bare state dict of a 2-class model with no config"):
        spam.load_classifier(tmp_path / "book.pth")


def test_a_classifier_of_another_config_is_named(tmp_path: Path) -> None:
    spam.save_classifier(tmp_path / "c.pth", tiny_classifier(), max_length=20)
    state = torch.load(tmp_path / "c.pth", weights_only=True)
    state["config"] = {**TINY, "emb_dim": 64}
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(ValueError, match="does not match the config saved in it"):
        spam.load_classifier(tmp_path / "edited.pth")


def test_classify_script(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spam.save_classifier(tmp_path / "c.pth", tiny_classifier(), max_length=20)
    assert classify.main(["--model", str(tmp_path / "c.pth"), "Call now to win", "see you"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in lines] == ["Call now to win", "see you"]
    assert all(line.split("\t")[0] in spam.CLASS_NAMES and
               0.5 <= float(line.split("\t")[1]) <= 1 for line in lines)

    assert classify.main(["--model", str(tmp_path / "c.pth"), "  "]) == 2
    assert "the message is empty" in capsys.readouterr().err
    gpt2.save_checkpoint(tmp_path / "lm.pth", gpt2.GPTModel(TINY))
    assert classify.main(["--model", str(tmp_path / "lm.pth"), "hello"]) == 2
    assert "is a language model" in capsys.readouterr().err


def test_finetune_script_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exit_:
        finetune_classifier.main(["--epochs", "0"])
    assert exit_.value.code == 2 and "--epochs must be at least 1" in capsys.readouterr().err
    monkeypatch.setattr(gpt2, "COURSE_CHECKPOINT", tmp_path / "course-model" / "model.pth")
    spam.prepare_spam_splits(tmp_path)  # the data first, as the script does
    argv = ["--init", str(tmp_path / "course-model" / "model.pth"), "--data-dir", str(tmp_path)]
    assert finetune_classifier.main(argv) == 2
    assert "python 1_PreTraining/pretrain.py" in capsys.readouterr().err
    (tmp_path / "not-a-model.pth").write_text("hello")
    argv[1] = str(tmp_path / "not-a-model.pth")
    assert finetune_classifier.main(argv) == 2
    assert "not a PyTorch checkpoint" in capsys.readouterr().err
