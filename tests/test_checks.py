"""nst_jax.checks: the one validation of style blend weights, worded in the caller's names."""

from __future__ import annotations

import numpy as np
import pytest

from nst_jax.checks import check_weights, normalise_weights
from nst_jax.errors import NstError


def test_normalise_weights():
    w = normalise_weights([3, 1], 2)
    assert w.dtype == np.float32 and w.shape == (2,)
    np.testing.assert_allclose(w, [0.75, 0.25])
    np.testing.assert_allclose(normalise_weights(None, 4), 0.25)
    np.testing.assert_allclose(normalise_weights([0, 2, 0], 3), [0, 1, 0])


@pytest.mark.parametrize("weights", [[1, -1], [float("nan"), 1], [float("inf"), 1], [0, 0], []])
def test_bad_values(weights):
    with pytest.raises(NstError, match="^weights must be non-negative numbers with a positive sum"):
        check_weights(weights)


def test_count_and_names():
    with pytest.raises(NstError, match="^style_blend has 1 values for 2 styles$"):
        check_weights([1.0], 2, what="style_blend")
    with pytest.raises(NstError, match="^--style-weights has 3 values for 2 styles$"):
        normalise_weights([1, 2, 3], 2, what="--style-weights")
    assert check_weights([1, 2]) == [1.0, 2.0]  # unnormalised, any count without n
