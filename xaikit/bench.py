"""``xaikit bench``: speed of every explanation method against one plain forward+backward.

One run loads the model, takes one batch of images and times, on the same model and
batch, (a) one plain forward+backward, (b) the same with parameter gradients, and (c)
every requested method through ``xaikit.explain``. Each method's cost is reported as a
ratio to (a): ``ratio_to_fwd_bwd = seconds per batch of the method / seconds per batch
of one forward+backward``, so 1.5 means the method takes 1.5 times as long.

A benchmark, not a timed test: numbers depend on the machine and on what else it runs.

    python -m xaikit.bench --model demo-cifar10-vit --batch-size 64 --methods all --json bench.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import yaml
from torch import nn

from .errors import WeightsUnavailableError, XaikitError
from .paths import check_output_file

RATIO_DEFINITION = (
    "ratio_to_fwd_bwd = (seconds per batch of the method) / (seconds per batch of one plain forward+backward) "
    "= fwd_bwd_images_per_s / images_per_s; 1.5 means the method takes 1.5x the time of one forward+backward. "
    "The plain forward+backward is the model's logits for the batch, then torch.autograd.grad of the sum of the "
    "predicted-class logits with respect to the input images only (no parameter gradients: the gradient work an "
    "input-gradient method needs). fwd_bwd_params_images_per_s is the same pass with the gradients of every "
    "parameter as well (torch.autograd.grad on the input and the parameters; no .grad is written), for context."
)
MEASUREMENT = (
    "one untimed warm-up call of every measurement, then `repeats` rounds; each round times every measurement "
    "once, in the same order (forward+backward, forward+backward with parameters, then the methods), so load "
    "changes on the machine hit them alike; each figure is the median over the rounds. Methods are timed as "
    "xaikit.explain(model, images, method) with the method's default settings (creating the explainer included)."
)


class BenchmarkError(XaikitError, ValueError):
    """A benchmark setting (device, method list, batch size) is not valid."""


# -- measuring ------------------------------------------------------------------------


def forward_backward(model: nn.Module, images: torch.Tensor, *, parameters: bool = False) -> None:
    """One plain forward+backward: the logits, then the gradient of the predicted-class logits' sum.

    Gradients are taken with ``torch.autograd.grad`` with respect to the input only,
    or with `parameters` also to every parameter that requires a gradient; no
    ``.grad`` attribute is written.
    """
    inputs = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs)
        score = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
        wrt = [inputs]
        if parameters:
            wrt += [p for p in model.parameters() if p.requires_grad]
        # allow_unused: a model may hold parameters its forward pass does not use (their gradient is None)
        torch.autograd.grad(score, wrt, allow_unused=True)


def _timed(call: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes, waiting for the GPU's queued work before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".strip()


def benchmark(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str] | None = None,
    *,
    repeats: int = 3,
    reference_loops: bool = False,
    astrocytes: dict | None = None,
) -> dict:
    """Images per second of each method and of one plain forward+backward, on `model` and `images`.

    With `astrocytes` (a dict of ``xaikit.astrocytes`` settings, ``{}`` for its defaults), every method is
    also timed inside ``xaikit.astrocytes(model, **astrocytes)``, reported under ``astrocytes`` with its
    ``ratio_to_method``: seconds per batch inside the context / seconds per batch of the same method without it.

    With `reference_loops`, Smooth and Integrated CDAM (when among `methods`) are also timed as
    the authors' code runs them, one image and one sample at a time
    (`xaikit.methods.cdam.per_sample_cdam`, n = 50), reported under ``reference_loops`` with the
    batched method's ``speedup`` over its loop.

    `images` are one batch of normalised images (B, C, H, W) on the model's device;
    `methods` are registered method names (None: all of ``xaikit.list_methods()``);
    `repeats` rounds are timed after one warm-up and the median kept. A method that
    raises is reported as ``{"images_per_s": None, "ratio_to_fwd_bwd": None, "error": ...}``
    and does not stop the others. Returns the JSON-ready dict described in ``xaikit bench
    --help`` (without the run's metadata, which `run_benchmark` adds).
    """
    from . import explain
    from .methods.base import eval_mode

    methods = check_methods(methods)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise BenchmarkError(f"repeats must be a positive int; got {repeats!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        raise BenchmarkError(
            f"images must be one non-empty batch (B, C, H, W); got {getattr(images, 'shape', type(images).__name__)}"
        )
    device = images.device
    batch = len(images)
    calls: dict[str, Callable[[], object]] = {
        "fwd_bwd": lambda: forward_backward(model, images),
        "fwd_bwd_params": lambda: forward_backward(model, images, parameters=True),
    }
    for name in methods:
        calls[f"method:{name}"] = lambda name=name: explain(model, images, name)
    if astrocytes is not None:
        from .astrocytes import astrocytes as astrocytic_layer

        astro = astrocytic_layer(model, **astrocytes)  # settings checked before any timing
        settings = {**vars(astro.settings), "block": astro.block}
        for name in methods:
            calls[f"astro:{name}"] = lambda name=name: _inside(astrocytic_layer(model, **astrocytes), explain, model, images, name)
    loops = [name for name in ("smooth_cdam", "integrated_cdam") if reference_loops and name in methods]
    for name in loops:
        from .methods.cdam import per_sample_cdam

        calls[f"loop:{name}"] = lambda name=name: per_sample_cdam(model, images, method=name)
    errors: dict[str, str] = {}
    seconds: dict[str, list[float]] = {key: [] for key in calls}
    with eval_mode(model):
        for key, call in calls.items():  # warm-up: first-call allocations, lazy imports, kernel choice
            try:
                call()
            except Exception as err:  # noqa: BLE001  (a broken method is reported, not fatal)
                if not key.startswith(("method:", "loop:", "astro:")):
                    raise
                errors[key] = _error_text(err)
        for _ in range(repeats):
            for key, call in calls.items():
                if key in errors:
                    continue
                try:
                    seconds[key].append(_timed(call, device))
                except Exception as err:  # noqa: BLE001
                    if not key.startswith(("method:", "loop:", "astro:")):
                        raise
                    errors[key] = _error_text(err)
    median = {key: statistics.median(times) for key, times in seconds.items() if times and key not in errors}
    reference = median["fwd_bwd"]
    result: dict = {
        "fwd_bwd_images_per_s": batch / reference,
        "methods": {},
        "fwd_bwd_params_images_per_s": batch / median["fwd_bwd_params"],
        "fwd_bwd_seconds_per_batch": reference,
        "fwd_bwd_params_seconds_per_batch": median["fwd_bwd_params"],
    }
    for name in methods:
        key = f"method:{name}"
        if key in errors:
            result["methods"][name] = {"images_per_s": None, "ratio_to_fwd_bwd": None, "error": errors[key]}
        else:
            result["methods"][name] = {
                "images_per_s": batch / median[key],
                "ratio_to_fwd_bwd": median[key] / reference,
                "seconds_per_batch": median[key],
            }
    if loops:
        result["reference_loops"] = {}
    for name in loops:
        key = f"loop:{name}"
        if key in errors or f"method:{name}" in errors:
            result["reference_loops"][name] = {"error": errors.get(key) or errors[f"method:{name}"]}
            continue
        result["reference_loops"][name] = {
            "images_per_s": batch / median[key],
            "ratio_to_fwd_bwd": median[key] / reference,
            "seconds_per_batch": median[key],
            "speedup": median[key] / median[f"method:{name}"],
        }
    if astrocytes is not None:
        result["astrocytes"] = {"settings": settings, "methods": {}}
    for name in methods if astrocytes is not None else ():
        key = f"astro:{name}"
        if key in errors or f"method:{name}" in errors:
            result["astrocytes"]["methods"][name] = {"images_per_s": None, "ratio_to_method": None,
                                                      "error": errors.get(key) or errors[f"method:{name}"]}
            continue
        result["astrocytes"]["methods"][name] = {
            "images_per_s": batch / median[key],
            "ratio_to_method": median[key] / median[f"method:{name}"],
            "ratio_to_fwd_bwd": median[key] / reference,
            "seconds_per_batch": median[key],
        }
    return result


def _inside(context, call: Callable, *args) -> object:
    with context:
        return call(*args)


def check_methods(methods: Sequence[str] | str | None) -> list[str]:
    """Registered method names from a list, a comma-separated string, "all" or None (all)."""
    from .methods import list_methods

    valid = list_methods()
    if methods is None:
        return valid
    if isinstance(methods, str):
        methods = [part.strip() for part in methods.split(",") if part.strip()]
    methods = list(dict.fromkeys(methods))  # drop repeats, keep the order given
    if methods == ["all"]:
        return valid
    if not methods:
        raise BenchmarkError(f"no method given; name some (comma-separated) or 'all'. Valid methods: {', '.join(valid)}")
    unknown = [name for name in methods if name not in valid]
    if unknown:
        raise BenchmarkError(
            f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid methods are: {', '.join(valid)} (or 'all')"
        )
    return methods


# -- model and images -----------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """`device` ("cpu" or "cuda"), refusing CUDA where there is none."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise BenchmarkError(f"unknown device {device!r}; use cpu or cuda") from None
    if resolved.type not in ("cpu", "cuda"):
        raise BenchmarkError(f"unsupported device {device!r}; use cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(
            f"--device {device} asked for, but CUDA is not available here (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}); run with --device cpu, or on a machine with an NVIDIA GPU "
            "and a CUDA build of torch"
        )
    return resolved


def bench_images(model: nn.Module, model_name: str, batch_size: int, source: str = "auto") -> tuple[torch.Tensor, str]:
    """One batch of normalised images for `model`, and a sentence saying what they are.

    `source` "auto": synthetic shapes for demo-shapes-vit, CIFAR-10 test images for
    other 32x32 RGB models (random ones where CIFAR-10 cannot be loaded), random
    normal images of the model's input size otherwise; "random": always random
    normal images (speed does not depend on the pixels).
    """
    from .imaging import preprocess

    size = tuple(model.patch_embed.img_size)
    channels = model.patch_embed.proj.in_channels
    note = ""
    if source == "auto" and channels == 3 and size == (32, 32):
        from .data import load_examples

        data = "shapes" if model_name == "demo-shapes-vit" else "cifar10"
        try:
            examples = load_examples(data, batch_size)
        except XaikitError as err:
            note = f" (the {data} images could not be loaded: {err})"
        else:
            if len(examples) == batch_size:
                what = "synthetic shapes (held-out set)" if data == "shapes" else "CIFAR-10 test images"
                return preprocess(model, examples.images), f"{batch_size} {what} via xaikit.data.load_examples({data!r})"
            note = f" (only {len(examples)} {data} images exist)"
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((batch_size, channels, *size), generator=generator)
    return images, f"{batch_size} random normal images {channels}x{size[0]}x{size[1]} (seed 0){note}"


def run_benchmark(
    model_name: str,
    batch_size: int,
    *,
    device: str = "cpu",
    methods: Sequence[str] | str | None = None,
    repeats: int = 3,
    pretrained: bool = True,
    images: str = "auto",
    threads: int | None = None,
    model_kwargs: dict | None = None,
    reference_loops: bool = False,
    astrocytes: dict | None = None,
) -> dict:
    """Load `model_name` (any name ``xaikit.load_model`` accepts), time it, return the JSON report."""
    from . import __version__, load_model

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BenchmarkError(f"batch size must be a positive int; got {batch_size!r}")
    if images not in ("auto", "random"):
        raise BenchmarkError(f"images must be 'auto' or 'random'; got {images!r}")
    method_names = check_methods(methods)
    resolved = resolve_device(device)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise BenchmarkError(f"threads must be a positive int; got {threads!r}")
        torch.set_num_threads(threads)
    options = dict(model_kwargs or {})
    if not pretrained:
        options["pretrained"] = False
    try:
        model = load_model(model_name, **options)
    except WeightsUnavailableError as err:
        raise WeightsUnavailableError(
            f"{err}\n  for a speed benchmark random weights time the same: add --random-weights"
        ) from None
    model.to(resolved)
    batch, described = bench_images(model, model_name, batch_size, images)
    param = next(model.parameters())
    batch = batch.to(device=resolved, dtype=param.dtype)
    timings = benchmark(model, batch, method_names, repeats=repeats, reference_loops=reference_loops,
                        astrocytes=astrocytes)
    return {
        "fwd_bwd_images_per_s": timings.pop("fwd_bwd_images_per_s"),
        "methods": timings.pop("methods"),
        **timings,
        "definition": RATIO_DEFINITION,
        "measurement": MEASUREMENT,
        "statistic": "median",
        "model": model_name,
        "weights": _weights_description(model_name, pretrained),
        "model_kwargs": {key: value for key, value in (model_kwargs or {}).items()},
        "batch_size": batch_size,
        "images": described,
        "device": str(resolved) if resolved.type == "cpu" else f"{resolved} ({torch.cuda.get_device_name(resolved)})",
        "dtype": str(param.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "torch": torch.__version__,
        "xaikit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _weights_description(model_name: str, pretrained: bool) -> str:
    from .demo_models import DEMO_MODELS

    if model_name in DEMO_MODELS:
        return "shipped demo weights"
    return "pretrained" if pretrained else "random (load_model(..., pretrained=False))"


# -- output -----------------------------------------------------------------------------


def format_table(report: dict) -> str:
    """A plain-text table: method, images/s, ratio to one forward+backward."""
    rows = [
        ("forward+backward (input grad)", f"{report['fwd_bwd_images_per_s']:.1f}", "1.00"),
        ("forward+backward (+param grads)", f"{report['fwd_bwd_params_images_per_s']:.1f}",
         f"{report['fwd_bwd_images_per_s'] / report['fwd_bwd_params_images_per_s']:.2f}"),
    ]
    for name, entry in report["methods"].items():
        if entry.get("error"):
            rows.append((name, "error", entry["error"].splitlines()[0][:100]))
        else:
            rows.append((name, f"{entry['images_per_s']:.1f}", f"{entry['ratio_to_fwd_bwd']:.2f}"))
    header = ("method", "images/s", "ratio to fwd+bwd (time)")
    name_width = max(len(row[0]) for row in [header, *rows])
    speed_width = max(len(row[1]) for row in [header, *rows])
    lines = [
        f"xaikit bench: {report['model']}, batch {report['batch_size']}, {report['device']}, "
        f"{report['threads']} threads, median of {report['repeats']}, torch {report['torch']}",
        f"images: {report['images']}",
        "",
        f"{header[0]:<{name_width}}  {header[1]:>{speed_width}}  {header[2]}",
        f"{'-' * name_width}  {'-' * speed_width}  {'-' * len(header[2])}",
    ]
    for name, speed, ratio in rows:
        shown = ratio if speed == "error" else ratio.rjust(len(header[2]))
        lines.append(f"{name:<{name_width}}  {speed:>{speed_width}}  {shown}")
    for name, entry in report.get("reference_loops", {}).items():
        if entry.get("error"):
            lines.append(f"{name + ' (per-sample loop)':<{name_width}}  error: {entry['error'].splitlines()[0][:80]}")
        else:
            lines.append(f"{name + ' (per-sample loop)':<{name_width}}  {entry['images_per_s']:>{speed_width}.1f}  "
                         f"{entry['ratio_to_fwd_bwd']:.2f} (batched is {entry['speedup']:.1f}x faster)")
    astro = report.get("astrocytes")
    for name, entry in (astro or {}).get("methods", {}).items():
        label = f"{name} (astrocytes)"
        if entry.get("error"):
            lines.append(f"{label:<{name_width}}  error: {entry['error'].splitlines()[0][:80]}")
        else:
            lines.append(f"{label:<{name_width}}  {entry['images_per_s']:>{speed_width}.1f}  "
                         f"{entry['ratio_to_fwd_bwd']:.2f} ({entry['ratio_to_method']:.2f}x the method's time without)")
    lines += ["", "ratio = seconds per batch of the method / seconds per batch of one forward+backward (input grad)."]
    if astro:
        shown = ", ".join(f"{key}={value:g}" for key, value in astro["settings"].items())
        lines.append(f"(astrocytes): the method inside xaikit.astrocytes(model, {shown}).")
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _astrocyte_settings(text: str) -> dict:
    """``k=6,tau=3`` -> {"k": 6, "tau": 3} (values read as YAML); the settings themselves are checked by
    ``xaikit.astrocytes``."""
    from .astrocytes import astrocytes

    valid = [name for name in inspect.signature(astrocytes).parameters if name != "model"]
    settings = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, equals, value = part.partition("=")
        if not equals or name.strip() not in valid:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(valid)}; got {part!r}")
        settings[name.strip()] = yaml.safe_load(value)
    return settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``xaikit bench`` options to `parser`."""
    parser.description = (
        "Images per second of every explanation method and of one plain forward+backward of the same model and "
        "batch, measured in one run, and each method's ratio to it. " + RATIO_DEFINITION + " Measurement: "
        + MEASUREMENT + " A benchmark, not a timed test."
    )
    parser.add_argument("--model", required=True, metavar="NAME",
                        help="any name xaikit.load_model accepts: demo-cifar10-vit, demo-shapes-vit, a timm ViT name")
    parser.add_argument("--batch-size", required=True, type=_positive_int, metavar="B", help="images per batch")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    parser.add_argument("--methods", default="all", metavar="a,b|all",
                        help="comma-separated method names, or all (default: every method of xaikit.list_methods())")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", dest="json_file",
                        help='write {"fwd_bwd_images_per_s": x, "methods": {name: {"images_per_s": y, '
                             '"ratio_to_fwd_bwd": r}}, ...metadata} to FILE')
    parser.add_argument("--repeats", type=_positive_int, default=3, metavar="R",
                        help="timed rounds after one warm-up; the median is reported (default 3)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", dest="pretrained", action="store_true", default=True,
                         help="load pretrained weights (the default; demo models always load their shipped weights)")
    weights.add_argument("--random-weights", "--no-pretrained", dest="pretrained", action="store_false",
                         help="random weights (load_model(NAME, pretrained=False)): timm models without weights "
                              "on this machine; speed does not depend on the weights")
    parser.add_argument("--images", default="auto", choices=("auto", "random"),
                        help="auto (default): synthetic shapes for demo-shapes-vit, CIFAR-10 test images for other "
                             "32x32 models, random normal images otherwise; random: always random normal images (the pixel values do not change the speed)")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's default)")
    parser.add_argument("--reference-loops", action="store_true",
                        help="also time Smooth and Integrated CDAM as the authors' code runs them, one image and one "
                             "sample at a time (n = 50), and report each batched method's speedup over its loop")
    parser.add_argument("--astrocytes", nargs="?", const={}, default=None, type=_astrocyte_settings, metavar="K=V,...",
                        help="also time every method inside xaikit.astrocytes(model, ...) (ViTA's astrocytic layer) "
                             "against the same method without it; settings as k=6,tau=3,phi=-0.5,alpha=1.5,beta=0.05,"
                             "block=0 (default: those, the paper's)")
    parser.add_argument("--model-kwarg", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a timm.create_model setting for timm models (VALUE read as YAML: 64, true, text); "
                             "repeatable, e.g. --model-kwarg img_size 64 --model-kwarg depth 2")


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``xaikit bench`` with parsed `args`: print the table, write the JSON; 0 on success, 2 on bad input."""
    model_kwargs = {name: yaml.safe_load(value) for name, value in args.model_kwarg}
    try:
        if args.json_file is not None:  # before the benchmark, not after minutes of it
            args.json_file = check_output_file(args.json_file, "--json")
        report = run_benchmark(
            args.model, args.batch_size, device=args.device, methods=args.methods, repeats=args.repeats,
            pretrained=args.pretrained, images=args.images, threads=args.threads, model_kwargs=model_kwargs,
            reference_loops=args.reference_loops, astrocytes=args.astrocytes,
        )
    except XaikitError as err:
        print(f"xaikit bench: {err}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json_file is not None:
        args.json_file.parent.mkdir(parents=True, exist_ok=True)
        args.json_file.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json_file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xaikit bench")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
