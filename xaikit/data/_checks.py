"""Argument checks shared by the data loaders."""

from __future__ import annotations

import numbers

import numpy as np

from ..errors import InvalidParameterError


def check_count(function: str, name: str, value: object, meaning: str = "") -> int:
    """`value` as a Python int >= 0 (numpy integers accepted; bools, floats and negatives refused).

    The message names the function and the argument as the caller wrote them; `meaning` (e.g.
    ``" (the number of images)"``) says what the count is.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidParameterError(f"{function} needs {name} to be a non-negative int{meaning}; got {value!r}")
    return int(value)
