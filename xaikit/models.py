"""Loading timm ViTs, with local weights and a fast, clear failure when offline.

``load_model(name)`` accepts any timm model name (with or without a
pretrained tag, e.g. ``"deit_base_patch16_224.fb_in1k"``). Weights are looked
for, in order:

1. the file given as ``weights=`` (``.safetensors``, ``.pth``, ``.pt``, ``.bin``);
2. ``<weights dir>/<name>.safetensors`` (or ``.pth``/``.pt``/``.bin``), where the
   weights dir is ``$XAIKIT_WEIGHTS_DIR`` or ``~/.cache/xaikit/weights``;
3. the Hugging Face cache, for files fetched earlier by timm or ``hf download``;
4. a download through timm, after checking within seconds that its host is reachable.

``.pth`` files are read with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import difflib
import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import InvalidParameterError, WeightsUnavailableError
from .introspection import check_vit

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
PROBE_TIMEOUT_S = 3.0


def weights_dir() -> Path:
    """Folder searched for local weights: ``$XAIKIT_WEIGHTS_DIR`` or ``~/.cache/xaikit/weights``."""
    return Path(os.environ.get("XAIKIT_WEIGHTS_DIR", Path.home() / ".cache" / "xaikit" / "weights")).expanduser()


def load_model(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    **timm_kwargs,
) -> nn.Module:
    """A timm ViT in eval mode, with pretrained weights unless ``pretrained=False``.

    `timm_kwargs` go to ``timm.create_model`` (e.g. ``num_classes``, ``img_size``).
    """
    from . import demo_models

    if name in demo_models.DEMO_MODELS:
        model = demo_models.load_demo_model(name)
    else:
        model = _create(name, **timm_kwargs)
        check_vit(model)
        if weights is not None:
            load_weights(model, weights)
        elif pretrained:
            _load_pretrained(model, name)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def _create(name: str, **timm_kwargs) -> nn.Module:
    import timm

    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InvalidParameterError(f"timm has no model named {name!r}{hint} (see timm.list_models('vit*'))")
    try:
        return timm.create_model(name, pretrained=False, **timm_kwargs)
    except RuntimeError as err:  # unknown pretrained tag
        tags = timm.list_pretrained(f"{architecture}.*")
        raise InvalidParameterError(f"{err}; pretrained tags of {architecture}: {', '.join(tags) or 'none'}") from err


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file; pickled checkpoints are read with ``weights_only=True``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in WEIGHT_SUFFIXES:
        raise InvalidParameterError(f"weights file {path} has suffix {path.suffix!r}; xaikit reads {', '.join(WEIGHT_SUFFIXES)}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsUnavailableError(
            f"could not read {path} as a weights-only checkpoint ({err}); convert it to .safetensors "
            "on a trusted machine, or re-save the bare state_dict with torch.save"
        ) from err
    # Training checkpoints nest the weights (DeiT: 'model'; Lightning: 'state_dict').
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local weights file into `model`, adapting original-format checkpoints via timm."""
    state_dict = read_state_dict(path)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"{path} does not fit {type(model).__name__}: missing {_few(missing)}, unexpected {_few(unexpected)}. "
            "Check that the file belongs to this model name (and num_classes)."
        )
    return model


def _few(keys: list[str]) -> str:
    return "none" if not keys else ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def _load_pretrained(model: nn.Module, name: str) -> None:
    cfg = model.pretrained_cfg
    full_name = f"{cfg.get('architecture', name.split('.')[0])}.{cfg['tag']}" if cfg.get("tag") else name
    for stem in dict.fromkeys((name, full_name)):
        for suffix in WEIGHT_SUFFIXES:
            candidate = weights_dir() / f"{stem}{suffix}"
            if candidate.is_file():
                load_weights(model, candidate)
                return
    cached = _hub_cache_file(cfg)
    if cached is not None:
        load_weights(model, cached)
        return

    source, host = _weights_source(cfg)
    if source is None:
        raise WeightsUnavailableError(f"timm lists no pretrained weights for {full_name!r}; pass weights= a local file")
    reason = _unreachable(host)
    if reason is None:
        try:
            import timm.models

            timm.models.load_pretrained(model)
            return
        except Exception as err:  # network errors come in many types
            reason = f"{type(err).__name__}: {err}"
    raise WeightsUnavailableError(
        f"cannot download the pretrained weights of {full_name!r} ({reason}).\n"
        f"  needed: {source}\n"
        f"  fix: download that file on a machine with internet access and either save it as "
        f"{weights_dir() / (full_name + '.safetensors')} (or .pth; the folder is $XAIKIT_WEIGHTS_DIR), "
        f"or call xaikit.load_model({name!r}, weights='path/to/file')."
    )


def _hub_cache_file(cfg: dict) -> str | None:
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in HUB_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def _weights_source(cfg: dict) -> tuple[str | None, str | None]:
    if cfg.get("hf_hub_id"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return f"{HUB_FILES[0]} of the Hugging Face repo {cfg['hf_hub_id']} ({endpoint}/{cfg['hf_hub_id']})", urlparse(endpoint).hostname
    if cfg.get("url"):
        return cfg["url"], urlparse(cfg["url"]).hostname
    return None, None


def _unreachable(host: str | None) -> str | None:
    """Why `host` cannot be reached within a few seconds, or None if it can."""
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{host} is unreachable: {err}")

    # getaddrinfo has no timeout of its own, so bound the whole probe with a thread.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(2 * PROBE_TIMEOUT_S)
    return outcome[0] if outcome else f"{host} did not answer within {2 * PROBE_TIMEOUT_S:.0f} s"
