"""Relevance rules: how relevance flows backwards through the modules of a timm ViT.

`chefer` holds the LRP rules of Chefer, Gur & Wolf (CVPR 2021; both rule sets
of their reference code), used by ``transformer_attribution``, ``lrp`` and
``partial_lrp``.
"""

from .chefer import LAYERS_LRP, LAYERS_OURS, RULE_SETS, CheferLRP, RuleSet, check_lrp_model, start_relevance

__all__ = ["CheferLRP", "LAYERS_LRP", "LAYERS_OURS", "RULE_SETS", "RuleSet", "check_lrp_model", "start_relevance"]
