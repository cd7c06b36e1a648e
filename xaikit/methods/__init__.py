"""Explanation methods, one small module each, registered by name."""

from . import gae, raw_attention, rollout  # noqa: F401  (registration)
from .base import Explainer, get_method, list_methods, method_parameters, register

__all__ = ["Explainer", "get_method", "list_methods", "method_parameters", "register"]
