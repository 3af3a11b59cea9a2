"""validate.py: the checks of user numbers say the allowed range the right way round."""

import pytest

from v2s_nb.validate import finite, integer


def test_unbounded_ends_read_minus_inf_below_and_inf_above():
    with pytest.raises(ValueError, match=r"batch_size = 0 is out of range \[1, inf\]"):
        integer(0, "batch_size", lo=1)
    with pytest.raises(ValueError, match=r"t = 2 is out of range \[-inf, 1\]"):
        finite(2, "t", hi=1)
    with pytest.raises(ValueError, match="must be an integer"):
        integer(2.5, "steps", lo=1)
    assert integer("7", "steps", lo=1) == 7 and finite(0.5, "t", 0, 1) == 0.5
