"""The three profiles every notebook runs in.

* ``smoke``: seconds, tiny inputs; the test suite runs every notebook this way.
* ``demo``: the default: the small ViTs this project trains, CIFAR-10 and synthetic
  data with known ground truth; minutes on a laptop CPU, offline.
* ``paper``: the papers' real models and data sets, on a GPU; where they are missing
  the notebook stops with a message saying what to download and where to put it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from .errors import InvalidParameterError

PROFILES = ("smoke", "demo", "paper")


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise InvalidParameterError(f"unknown profile {profile!r}; valid profiles are {', '.join(PROFILES)}")
    return profile


def settings(profile: str, defaults: dict[str, dict[str, Any]], **given: Any) -> SimpleNamespace:
    """A notebook's settings: the profile's defaults, updated by the parameters the user set.

    A parameter left empty (``""``, ``0``, ``None``, ``[]``) takes the profile's default,
    so a notebook's parameters cell can list every setting with a neutral value.
    """
    check_profile(profile)
    missing = [p for p in PROFILES if p not in defaults]
    if missing:
        raise InvalidParameterError(f"defaults are missing for profile(s) {', '.join(missing)}")
    chosen = dict(defaults[profile])
    for name, value in given.items():
        if not (value is None or (not isinstance(value, bool) and value in ("", 0, [], ()))):
            chosen[name] = value
    return SimpleNamespace(profile=profile, **chosen)
