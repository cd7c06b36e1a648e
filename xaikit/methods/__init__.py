"""Explanation methods, one small module each, registered by name."""

from . import attcat, attn_gradcam, attnlrp, cdam, centre_prior, conservative_lrp, gae, gradcam, input_gradients, lrp, random_map, raw_attention, rollout, token_ablation, tokentm, transformer_attribution  # noqa: F401  (registration)
from .base import Explainer, get_method, list_methods, method_parameters, register
from .facts import method_facts

__all__ = ["Explainer", "get_method", "list_methods", "method_facts", "method_parameters", "register"]
