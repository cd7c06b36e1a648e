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
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .demo_models import DEMO_MODELS, load_demo_model, model_card
from .errors import InvalidParameterError, WeightsUnavailableError
from .introspection import check_vit
# read_state_dict and load_weights live with the file readers (`xaikit.weight_files`); named here too, as before.
from .weight_files import WEIGHT_SUFFIXES, load_weights, read_state_dict  # noqa: F401

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
    Demo models (``demo-...``) always load their shipped weights and take only
    ``device=``. ``hf-hub:timm/<name>`` is the timm name ``<name>``; other
    ``hf-hub:`` names are loaded by timm from the Hugging Face Hub (online only).
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidParameterError(
            f"load_model needs a model name (a str); got {name!r}. Demo models: "
            f"{', '.join(DEMO_MODELS)}; timm ViTs: timm.list_models('vit*'), e.g. 'vit_base_patch16_224.augreg_in21k'"
        )
    if name.startswith("hf-hub:timm/"):
        # timm's own Hub repos are named after the timm model: use the local-first path below.
        name = name.removeprefix("hf-hub:timm/")
    if name in DEMO_MODELS:
        _refuse_demo_options(name, weights=weights, pretrained=pretrained, timm_kwargs=timm_kwargs)
        model = load_demo_model(name)
    elif name.startswith("hf-hub:"):
        model = _create_from_hub(name, weights=weights, pretrained=pretrained, **timm_kwargs)
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


def _refuse_demo_options(name: str, *, weights, pretrained: bool, timm_kwargs: dict) -> None:
    given = [f"weights={weights!r}"] if weights is not None else []
    given += ["pretrained=False"] if not pretrained else []
    given += [f"{key}={value!r}" for key, value in timm_kwargs.items()]
    if not given:
        return
    card = model_card(name)
    settings = ", ".join(f"{k}={v!r}" for k, v in card["timm_kwargs"].items() if k != "pretrained_cfg_overlay")
    raise InvalidParameterError(
        f"demo model {name!r} always loads its shipped weights and takes only device=; got {', '.join(given)}. "
        f"For its architecture with other weights or settings call "
        f"xaikit.load_model({card['architecture']!r}, pretrained=False, {settings}) and change what you need "
        "(weights='file', num_classes=...)"
    )


def _create_from_hub(name: str, *, weights, pretrained: bool, **timm_kwargs) -> nn.Module:
    """A model whose config (and weights) timm reads from a Hugging Face Hub repo."""
    import timm

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    repo = name.removeprefix("hf-hub:")
    fix = (
        f"  fix: on a machine with internet access run timm.create_model({name!r}, pretrained=True) once (it fills the "
        "Hugging Face cache), or download the repo's files and load them with "
        "xaikit.load_model('<timm architecture of the repo>', weights='path/to/model.safetensors', **its settings)."
    )
    reason = _unreachable(urlparse(endpoint).hostname)
    if reason is not None:
        raise WeightsUnavailableError(
            f"cannot load {name!r}: hf-hub: names are read from the Hugging Face Hub ({endpoint}/{repo}), and {reason}.\n{fix}"
        )
    try:
        model = timm.create_model(name, pretrained=pretrained and weights is None, **timm_kwargs)
    except Exception as err:  # network, missing repo and config errors come in many types
        raise WeightsUnavailableError(f"timm could not load {name!r} from {endpoint}/{repo} ({type(err).__name__}: {err}).\n{fix}") from err
    check_vit(model)
    if weights is not None:
        load_weights(model, weights)
    return model


def _create(name: str, **timm_kwargs) -> nn.Module:
    import timm

    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, [*DEMO_MODELS, *timm.list_models()], n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InvalidParameterError(f"timm has no model named {name!r}{hint} (see timm.list_models('vit*'))")
    try:
        return timm.create_model(name, pretrained=False, **timm_kwargs)
    except RuntimeError as err:  # unknown pretrained tag
        tags = timm.list_pretrained(f"{architecture}.*")
        raise InvalidParameterError(f"{err}; pretrained tags of {architecture}: {', '.join(tags) or 'none'}") from err


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
