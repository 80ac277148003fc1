"""1_PreTraining/pretrain.py and token_shards.py: shards on disk, the schedule, a run that
learns, exact resumption, two processes against one, and every bad input refused."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gpt2
import pretrain
import token_shards
from gpt2_fixtures import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
EOT = token_shards.EOT_ID
TINY = ["--n-layer", "2", "--n-head", "2", "--emb-dim", "32", "--context", "16",
        "--batch-size", "2", "--warmup", "2", "--eval-batches", "2", "--sample-tokens", "4"]
DOCS = [f"Document {i}: the {'quick brown fox' if i % 2 else 'lazy dog'} number {i} "
        f"jumps over {i * 7} fences, then rests." for i in range(300)]


def write_corpus(folder: Path, docs: list[str] = DOCS[:20]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (folder / f"doc{i:03d}.txt").write_text(doc)
    return folder


def doc_tokens(docs: list[str]) -> np.ndarray:
    """What the shards should hold: each document after an end-of-text token, in order."""
    tokenizer = gpt2.get_tokenizer()
    return np.concatenate([[EOT] + tokenizer.encode_ordinary(doc) for doc in docs])


def shard_tokens(folder: Path, split: str) -> np.ndarray:
    shards = token_shards.load_split(folder, split)
    return np.concatenate(shards) if shards else np.array([], dtype=np.uint16)


def train(tmp_path: Path, corpus: Path, *args: str, out: str = "run") -> list[dict]:
    """Run pretrain.main in this process; returns the records of its log.jsonl."""
    argv = ["--dataset", str(corpus), "--tokens-dir", str(tmp_path / "tokens"),
            "--out-dir", str(tmp_path / out), *TINY, *args]
    assert pretrain.main(argv) == 0
    return pretrain.read_log(tmp_path / out / "log.jsonl")


def losses(records: list[dict]) -> list[float]:
    return [r["loss"] for r in records]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small repetitive text: enough windows for a few steps, quick to learn."""
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(" ".join(DOCS[:60]))
    return path

# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


def test_local_text_shards_hold_every_document_after_an_end_of_text(tmp_path):
    folder = token_shards.prepare_tokens(str(write_corpus(tmp_path / "texts")), tmp_path / "tokens",
                                         val_fraction=0.1, shard_tokens=100)
    index = token_shards.read_index(folder)
    expected = doc_tokens(DOCS[:20])  # files are read in name order
    train, val = shard_tokens(folder, "train"), shard_tokens(folder, "val")
    assert sum(s["tokens"] for s in index["train"] + index["val"]) == len(expected)
    assert len(val) == round(0.1 * len(expected))  # the last tenth, after all of train
    assert np.array_equal(np.concatenate([train, val]), expected)
    assert all(s["tokens"] == 100 for s in index["train"][:-1])
    assert not list(folder.glob("*.part"))
    # A finished corpus is reused, not tokenised again.
    mtime = (folder / token_shards.INDEX_NAME).stat().st_mtime_ns
    token_shards.prepare_tokens(str(tmp_path / "texts"), tmp_path / "tokens", 0.1, 100)
    assert (folder / token_shards.INDEX_NAME).stat().st_mtime_ns == mtime


def write_hub_copy(folder: Path, kind: str, docs: list[str]) -> Path:
    """A local copy of a Hub data set: two files of rows with a "text" column."""
    folder.mkdir(parents=True)
    halves = (docs[:len(docs) // 2], docs[len(docs) // 2:])
    for i, part in enumerate(halves):
        if kind == "parquet":
            pyarrow = pytest.importorskip("pyarrow")
            import pyarrow.parquet as pq
            pq.write_table(pyarrow.table({"text": part, "id": list(range(len(part)))}),
                           folder / f"train-{i:05d}.parquet")
        else:
            lines = (json.dumps({"text": doc, "id": n}) for n, doc in enumerate(part))
            (folder / f"train-{i:05d}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("kind", ["parquet", "json"])
def test_hub_layout_streams_into_fixed_shards_the_first_for_validation(tmp_path, kind):
    pytest.importorskip("datasets")
    source = write_hub_copy(tmp_path / "hub", kind, DOCS)
    folder = token_shards.prepare_tokens(str(source), tmp_path / "tokens", shard_tokens=1000,
                                         workers=2)
    index = token_shards.read_index(folder)
    expected = doc_tokens(DOCS)
    val, train = shard_tokens(folder, "val"), shard_tokens(folder, "train")
    assert [s["file"] for s in index["val"]] == ["val_000000.bin"] and len(val) == 1000
    assert [s["tokens"] for s in index["train"][:-1]] == [1000] * (len(index["train"]) - 1)
    assert np.array_equal(np.concatenate([val, train]), expected)  # disjoint, nothing lost


def test_a_cut_hub_run_resumes_at_the_next_shard_and_writes_none_twice(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    source = str(write_hub_copy(tmp_path / "hub", "json", DOCS))
    written, original = [], token_shards.write_shard

    class PowerCut(Exception):
        pass

    def write_then_cut(folder, split, number, tokens):
        if number == 3 and 3 not in written and written.count("cut") == 0:
            written.append("cut")
            raise PowerCut  # the machine stops while shard 3 is being made
        written.append(number)
        return original(folder, split, number, tokens)

    monkeypatch.setattr(token_shards, "write_shard", write_then_cut)
    with pytest.raises(PowerCut):
        token_shards.prepare_tokens(source, tmp_path / "tokens", shard_tokens=700, workers=1)
    folder = tmp_path / "tokens" / token_shards.corpus_name(source)
    assert sorted(p.name for p in folder.glob("*.bin")) == [
        "train_000001.bin", "train_000002.bin", "val_000000.bin"]
    token_shards.prepare_tokens(source, tmp_path / "tokens", shard_tokens=700, workers=1)
    written.remove("cut")
    assert len(written) == len(set(written)) == len(list(folder.glob("*.bin")))
    both = np.concatenate([shard_tokens(folder, "val"), shard_tokens(folder, "train")])
    assert np.array_equal(both, doc_tokens(DOCS))

def test_a_data_sets_own_validation_split_is_the_validation_split(tmp_path):
    """As TinyStories: validation files beside the training ones become the validation shards,
    and every training document goes to training, none held out."""
    pytest.importorskip("datasets")
    source = write_hub_copy(tmp_path / "hub", "json", DOCS[:30])
    lines = (json.dumps({"text": doc}) for doc in DOCS[30:40])
    (source / "validation-00000.jsonl").write_text("\n".join(lines) + "\n")
    folder = token_shards.prepare_tokens(str(source), tmp_path / "tokens", shard_tokens=500,
                                         workers=1)
    assert np.array_equal(shard_tokens(folder, "val"), doc_tokens(DOCS[30:40]))
    assert np.array_equal(shard_tokens(folder, "train"), doc_tokens(DOCS[:30]))
    assert token_shards.read_index(folder)["settings"]["validation_split"] is True


def test_tinystories_validates_on_its_validation_split_and_fineweb_on_a_shard():
    assert token_shards.parse_hub_name("tinystories") == ("roneneldan/TinyStories", None,
                                                          "validation")
    assert token_shards.parse_hub_name("fineweb-edu:sample-100BT")[2] is None
    assert token_shards.split_of(Path("data/validation-00000-of-00001.parquet")) == "val"
    assert token_shards.split_of(Path("validation/part-0.parquet")) == "val"
    assert token_shards.split_of(Path("data/train-00000-of-00004.parquet")) == "train"


# ---------------------------------------------------------------------------------------------
# Schedule and windows
# ---------------------------------------------------------------------------------------------


def test_lr_at_warms_up_then_follows_a_cosine_to_the_minimum():
    peak, low, warmup, total = 1e-3, 1e-4, 10, 110
    assert pretrain.lr_at(0, peak, low, warmup, total) == pytest.approx(peak / warmup)
    assert pretrain.lr_at(warmup - 1, peak, low, warmup, total) == pytest.approx(peak)
    assert pretrain.lr_at(warmup, peak, low, warmup, total) == pytest.approx(peak)
    assert pretrain.lr_at(60, peak, low, warmup, total) == pytest.approx((peak + low) / 2)
    assert pretrain.lr_at(85, peak, low, warmup, total) == pytest.approx(
        low + (peak - low) * (1 + math.cos(math.pi * 0.75)) / 2)
    assert pretrain.lr_at(total, peak, low, warmup, total) == pytest.approx(low)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_norm", [0.5, 100.0, 0.0])
def test_clipped_step_matches_clip_grad_norm_then_step(max_norm, fused):
    torch.manual_seed(0)
    grads = [torch.randn(30, 20), torch.randn(20), torch.randn(7, 3, 5)]
    ours = [torch.nn.Parameter(torch.randn_like(g)) for g in grads]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b, g in zip(ours, theirs, grads):
        a.grad, b.grad = g.clone(), g.clone()
    norm = pretrain.clipped_step(torch.optim.AdamW(ours, lr=0.1, fused=fused), max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm or float("inf"))
    torch.optim.AdamW(theirs, lr=0.1).step()
    assert torch.allclose(norm, expected, rtol=1e-6)
    for a, b, g in zip(ours, theirs, grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-7)
        assert torch.equal(a.grad, g) == (max_norm == 0.0 or max_norm > norm)


def test_windows_never_cross_a_shard_and_targets_are_shifted_by_one():
    shards = [np.arange(0, 50, dtype=np.uint16), np.arange(100, 121, dtype=np.uint16)]
    windows = pretrain.TokenWindows(shards, context=8)
    assert len(windows) == 6 + 2  # (50 - 1) // 8 and (21 - 1) // 8
    inputs, targets = windows.batch(np.array([5, 6, 7]))
    assert inputs[:, 0].tolist() == [40, 100, 108]
    assert (targets[:, :-1] == inputs[:, 1:]).all() and targets[2, -1] == 116

# ---------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------


def test_loss_falls_and_the_outputs_load(tmp_path, corpus):
    records = train(tmp_path, corpus, "--steps", "12", "--lr", "1e-2", "--eval-every", "6",
                    "--dropout", "0")
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[-1]["loss"] < records[0]["loss"] - 2
    assert records[-1]["val_loss"] < records[5]["val_loss"] and isinstance(records[-1]["sample"], str)
    timed = [r for r in records if "eval_seconds" in r]
    assert [r["step"] for r in timed] == [6, 12] and all(r["checkpoint_seconds"] > 0 for r in timed)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} == {"checkpoint.pth", "model.pth", "log.jsonl", "loss.png"}
    model, _ = gpt2.load_checkpoint(out / "model.pth")
    assert model.out_head.weight is model.tok_emb.weight and model.cfg["n_layers"] == 2
    done = subprocess.run([sys.executable, str(ROOT / "gpt2.py"), "--checkpoint", str(out / "model.pth"),
                           "--max-new-tokens", "3"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr


def test_resume_gives_the_same_losses_as_never_stopping(tmp_path, corpus):
    args = ["--steps", "6", "--eval-every", "3", "--dropout", "0.1", "--batch-tokens", "64"]
    whole = train(tmp_path, corpus, *args, out="whole")
    first = train(tmp_path, corpus, *args, "--stop-at", "3", out="cut")
    assert not (tmp_path / "cut" / "model.pth").exists()
    resumed = train(tmp_path, corpus, *args, "--resume", out="cut")
    assert [r["step"] for r in resumed] == list(range(1, 7)) and first == resumed[:3]
    assert losses(resumed) == pytest.approx(losses(whole), abs=1e-6, rel=0)


def test_two_processes_see_the_batch_one_process_accumulates(tmp_path, corpus):
    args = ["--dataset", str(corpus), "--tokens-dir", str(tmp_path / "tokens"), *TINY,
            "--steps", "3", "--eval-every", "3", "--dropout", "0", "--batch-tokens", "64"]
    single = train(tmp_path, corpus, *args[4:], out="single")  # 2 micro-batches of 2 x 16
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(ROOT / "1_PreTraining" / "pretrain.py"), *args, "--out-dir", str(tmp_path / "ddp")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 micro-batch(es)" in done.stderr and "2 process(es)" in done.stderr
    ddp = pretrain.read_log(tmp_path / "ddp" / "log.jsonl")
    assert losses(ddp) == pytest.approx(losses(single), abs=1e-4, rel=0)

# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit status 2, nothing written or overwritten
# ---------------------------------------------------------------------------------------------


def refused(tmp_path: Path, capsys, corpus: Path, *args: str) -> str:
    argv = ["--dataset", str(corpus), "--tokens-dir", str(tmp_path / "tokens"),
            "--out-dir", str(tmp_path / "refused"), *TINY, *args]
    assert pretrain.main(argv) == 2
    err = capsys.readouterr().err  # after any progress bar: one line, the error
    assert err.splitlines()[-1].split("\r")[-1].startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "refused").exists()
    return err


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory) -> Path:
    """Weights to continue from, in the shape of TINY (2 layers, 2 heads, 32 wide), context 32."""
    cfg = {**gpt2.GPT_CONFIG_124M, "n_layers": 2, "n_heads": 2, "emb_dim": 32,
           "context_length": 32}
    return write_tiny_checkpoint(tmp_path_factory.mktemp("init"), cfg)


def test_init_from_starts_from_the_weights_and_takes_their_shape(tmp_path, corpus, tiny_init):
    train(tmp_path, corpus, "--init-from", str(tiny_init), "--steps", "2", "--lr", "0",
          "--min-lr", "0", "--eval-every", "2", "--dropout", "0")
    trained, _ = gpt2.load_checkpoint(tmp_path / "run" / "model.pth")
    start, _ = gpt2.load_checkpoint(tiny_init)
    assert trained.cfg["context_length"] == 32  # the weights' positions, not --context 16
    for name, value in start.state_dict().items():  # at learning rate 0 nothing moves
        assert torch.equal(trained.state_dict()[name], value), name


@pytest.mark.parametrize("args, message", [
    (["--n-layer", "3"], "--n-layer 3 contradicts --init-from"),
    (["--model-size", "355M"], "--model-size 355M contradicts --init-from"),
    (["--context", "64"], "longer than the 32 positions of --init-from"),
])
def test_init_from_refuses_flags_that_contradict_the_weights(tmp_path, capsys, corpus, tiny_init,
                                                             args, message):
    assert message in refused(tmp_path, capsys, corpus, "--init-from", str(tiny_init), *args)


def test_init_from_a_missing_file_names_it(tmp_path, capsys, corpus):
    assert "missing.pth" in refused(tmp_path, capsys, corpus, "--init-from",
                                    str(tmp_path / "missing.pth"))


def test_a_recipe_sets_defaults_that_flags_override():
    args = pretrain.parse_args(["--recipe", "tinystories", "--steps", "10"])
    assert (args.dataset, args.model_size, args.context, args.batch_tokens) == (
        "tinystories", "124M", 1024, 512 * 1024)
    assert args.weight_decay == 0.001 and args.compile and args.steps == 10


@pytest.mark.parametrize("args, message", [
    (["--steps", "-1"], "--steps must be positive"),
    (["--lr", "-0.1"], "--lr must not be negative"),
    (["--dropout", "1.5"], "--dropout must be in"),
    (["--emb-dim", "30", "--n-head", "4"], "multiple of --n-head"),
    (["--batch-tokens", "100"], "multiple of batch size x context"),
    (["--context", "5000"], "use a smaller --context"),
])
def test_bad_numbers_are_refused(tmp_path, capsys, corpus, args, message):
    assert message in refused(tmp_path, capsys, corpus, *args)


def test_empty_and_non_utf8_corpora_are_refused(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert "holds no text" in refused(tmp_path, capsys, tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me".encode("latin-1"))
    assert "is not UTF-8" in refused(tmp_path, capsys, tmp_path / "latin1.txt")
    assert "no file, folder or glob" in refused(tmp_path, capsys, tmp_path / "missing*.txt")
    assert not list((tmp_path / "tokens").rglob("*.bin"))


def test_a_malformed_hub_file_is_refused(tmp_path, capsys):
    pytest.importorskip("datasets")
    source = write_hub_copy(tmp_path / "hub", "json", DOCS[:10])
    with (source / "train-00001.jsonl").open("a") as f:
        f.write('{"text": "cut off in the mid\n')
    assert "cannot read the data set" in refused(tmp_path, capsys, source)
    assert not list((tmp_path / "tokens").rglob("*.bin"))


def test_resume_with_another_model_is_refused_and_changes_nothing(tmp_path, capsys, corpus):
    train(tmp_path, corpus, "--steps", "2", "--eval-every", "2", out="refused")
    before = {p.name: p.read_bytes() for p in (tmp_path / "refused").iterdir()}
    argv = ["--dataset", str(corpus), "--tokens-dir", str(tmp_path / "tokens"),
            "--out-dir", str(tmp_path / "refused"), *TINY, "--emb-dim", "64", "--resume"]
    assert pretrain.main(argv) == 2
    assert "holds a model with config" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "refused").iterdir()} == before


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys, corpus):
    assert "no checkpoint at" in refused(tmp_path, capsys, corpus, "--resume")
