"""The wire models the server answers with and the client reads: one definition, both sides."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydantic import ValidationError

from inference.wire import ActivationsResponse, ImageEntry, ImagesResponse


def test_activations_travel_as_rows_and_arrive_as_a_float32_matrix():
    matrix = np.array([[0.1, 2.5], [3.0, -1.25]], dtype=np.float32)
    sent = ActivationsResponse(target="t", layer="l", units=[4, 7], activations=matrix)
    wire = sent.model_dump_json()
    assert '"activations":[[' in wire and '"values"' not in wire
    received = ActivationsResponse.model_validate_json(wire)
    assert received.values.dtype == np.float32 and received.units == [4, 7]
    np.testing.assert_array_equal(received.values, matrix)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[1.0, 2.0], [3.0]], "rows of numbers of equal length"),
        ([1.0, 2.0], "must be rows of numbers, got an array of shape (2,)"),
        ([[1.0], [2.0]], "activations has 1 columns for 2 units"),
    ],
)
def test_malformed_activations_are_refused_clearly(rows, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        ActivationsResponse(target="t", layer="l", units=[0, 1], activations=rows)


def test_image_entries_read_back_equal():
    entries = [ImageEntry(id="a" * 64, prompt="a cat", seed=1, cached=False)]
    wire = ImagesResponse(images=entries).model_dump_json()
    assert ImagesResponse.model_validate_json(wire).images == entries
