"""generate(): the KV cache changes nothing but speed, rows stop at eos, bad settings are refused."""
import pytest
import torch

import gpt2

CFG = {**gpt2.GPT_CONFIG_124M, "context_length": 32, "emb_dim": 48, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.0}


@pytest.fixture(scope="module")
def model() -> gpt2.GPTModel:
    torch.manual_seed(0)
    return gpt2.GPTModel(CFG).eval()


def prompt(batch: int = 2, length: int = 10) -> torch.Tensor:
    return torch.randint(0, CFG["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(1))


def test_cached_greedy_equals_uncached_and_the_simple_loop(model):
    idx = prompt()  # 10 + 50 tokens: the window of 32 slides, so the cache must be rebuilt
    cached = gpt2.generate(model, idx, 50, CFG["context_length"], use_cache=True)
    uncached = gpt2.generate(model, idx, 50, CFG["context_length"], use_cache=False)
    simple = gpt2.generate_text_simple(model, idx, 50, CFG["context_length"])
    assert cached.shape == (2, 60)
    assert torch.equal(cached, uncached) and torch.equal(cached, simple)


def test_cached_logits_equal_full_forward(model):
    idx = prompt(length=20)
    cache = model.new_cache(2)
    with torch.no_grad():
        full = model(idx)
        first = model(idx[:, :12], cache=cache)
        rest = model(idx[:, 12:], cache=cache)  # several new tokens against a filled cache
    assert torch.allclose(torch.cat([first, rest], dim=1), full, atol=1e-5)


def expected_with_eos(free_row: torch.Tensor, start: int, eos: int) -> torch.Tensor:
    """A row generated freely, as it must look with eos_id: unchanged up to its first eos,
    eos from there on."""
    row = free_row.clone()
    hits = (row[start:] == eos).nonzero()
    if len(hits):
        row[start + hits[0].item():] = eos
    return row


def test_each_row_stops_at_eos(model):
    idx = prompt()
    free = gpt2.generate(model, idx, 15, CFG["context_length"])
    eos = free[0, 10 + 3].item()  # the 4th token row 0 makes on its own
    assert eos not in free[1, 10:14].tolist(), "pick a prompt where row 1 goes on past row 0"
    out = gpt2.generate(model, idx, 15, CFG["context_length"], eos_id=eos)
    assert out.shape == free.shape  # row 1 is not finished, so generation went on
    for row in range(2):  # greedy: each row is its free run, cut at its own first eos
        assert torch.equal(out[row], expected_with_eos(free[row], 10, eos)), row


def test_generation_ends_when_every_row_is_finished(model):
    idx = prompt(batch=1)
    free = gpt2.generate(model, idx, 15, CFG["context_length"])
    eos = free[0, 10 + 2].item()
    out = gpt2.generate(model, idx, 15, CFG["context_length"], eos_id=eos)
    assert out.shape[1] <= 10 + 3 and out[0, -1].item() == eos


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"temperature": 1.0, "top_k": 0}, "top_k must be >= 1"),
    ({"temperature": 1.0, "top_p": 0.0}, "top_p must be in"),
    ({"temperature": 1.0, "top_p": 1.5}, "top_p must be in"),
])
def test_bad_sampling_settings_raise(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        gpt2.generate(model, prompt(), 5, CFG["context_length"], **kwargs)


def test_over_long_prompt_is_cropped(model):
    idx = prompt(batch=1, length=3 * CFG["context_length"])
    out = gpt2.generate(model, idx, 5, CFG["context_length"])
    assert out.shape == (1, idx.shape[1] + 5) and torch.equal(out[:, :idx.shape[1]], idx)
    assert torch.equal(out, gpt2.generate_text_simple(model, idx, 5, CFG["context_length"]))


def test_empty_prompt_is_refused_with_advice(model):
    with pytest.raises(ValueError, match="endoftext"):
        gpt2.generate(model, torch.zeros(1, 0, dtype=torch.long), 5, CFG["context_length"])


def test_sampling_is_seeded_and_narrow_filters_equal_greedy(model):
    idx = prompt()
    greedy = gpt2.generate(model, idx, 8, CFG["context_length"])
    torch.manual_seed(5)
    a = gpt2.generate(model, idx, 8, CFG["context_length"], temperature=1.5, top_k=50)
    torch.manual_seed(5)
    b = gpt2.generate(model, idx, 8, CFG["context_length"], temperature=1.5, top_k=50)
    assert torch.equal(a, b) and not torch.equal(a, greedy)
    assert torch.equal(gpt2.generate(model, idx, 8, CFG["context_length"], temperature=1.0, top_k=1), greedy)
    assert torch.equal(gpt2.generate(model, idx, 8, CFG["context_length"], temperature=1.0, top_p=1e-6), greedy)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    draws = {gpt2.sample_next_token(logits, 1.0, top_p=0.8).item() for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.8; the rest is cut
