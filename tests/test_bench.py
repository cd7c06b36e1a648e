"""`xaikit bench`: structure of the report, method selection, failing methods, argument parsing.

Speed itself is not asserted (a benchmark, not a timed test); these runs are tiny (batch 2-4, one round).
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import xaikit
from xaikit.bench import BenchmarkError, add_arguments, benchmark, check_methods, main, run_from_args
from xaikit.errors import WeightsUnavailableError, XaikitError
from xaikit.methods import base

from conftest import small_vit

REQUIRED_ENTRY = {"images_per_s", "ratio_to_fwd_bwd"}


def tiny_vit(**overrides) -> torch.nn.Module:
    """The smallest plain ViT every method runs on: 32x32 images, 4 tokens, one block."""
    return small_vit("plain", img_size=32, depth=1, embed_dim=48, num_heads=3, **overrides)


def assert_timed(entry: dict, fwd_bwd_images_per_s: float) -> None:
    assert REQUIRED_ENTRY <= set(entry) and "error" not in entry, entry
    assert entry["images_per_s"] > 0 and entry["ratio_to_fwd_bwd"] > 0
    # ratio = method's seconds per batch / forward+backward's, i.e. the inverse ratio of the speeds
    assert entry["ratio_to_fwd_bwd"] == pytest.approx(fwd_bwd_images_per_s / entry["images_per_s"])


def test_benchmark_times_every_registered_method():
    model = tiny_vit()
    images = torch.randn(2, 3, 32, 32)
    report = benchmark(model, images, None, repeats=1)
    assert report["fwd_bwd_images_per_s"] > 0 and report["fwd_bwd_params_images_per_s"] > 0
    assert list(report["methods"]) == xaikit.list_methods()
    for entry in report["methods"].values():
        assert_timed(entry, report["fwd_bwd_images_per_s"])
    # the reference passes take their gradients with torch.autograd.grad: no parameter's .grad is written
    assert all(p.grad is None for p in model.parameters())


def test_main_writes_the_json_with_the_required_keys_for_a_subset(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    status = main(["--model", "demo-shapes-vit", "--batch-size", "4", "--repeats", "1",
                   "--methods", "random,gae", "--json", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    assert list(report)[:2] == ["fwd_bwd_images_per_s", "methods"]
    assert report["fwd_bwd_images_per_s"] > 0
    assert list(report["methods"]) == ["random", "gae"]  # only the requested ones, in the order given
    for entry in report["methods"].values():
        assert_timed(entry, report["fwd_bwd_images_per_s"])
    assert report["model"] == "demo-shapes-vit" and report["batch_size"] == 4 and report["repeats"] == 1
    assert report["device"] == "cpu" and report["threads"] == torch.get_num_threads()
    assert report["torch"] == torch.__version__ and report["statistic"] == "median"
    assert "ratio_to_fwd_bwd = (seconds per batch of the method)" in report["definition"]
    assert "synthetic shapes" in report["images"]
    table = capsys.readouterr().out
    assert "forward+backward (input grad)" in table and "gae" in table and "random" in table


def test_random_weights_timm_model_with_settings_and_random_images(tmp_path):
    out = tmp_path / "bench.json"
    status = main(["--model", "vit_tiny_patch16_224", "--random-weights", "--model-kwarg", "img_size", "32",
                   "--model-kwarg", "depth", "1", "--model-kwarg", "embed_dim", "48", "--model-kwarg", "num_heads", "3",
                   "--images", "random", "--batch-size", "2", "--repeats", "1", "--methods", "raw_attention",
                   "--json", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    assert report["model_kwargs"] == {"img_size": 32, "depth": 1, "embed_dim": 48, "num_heads": 3}
    assert report["weights"].startswith("random")
    assert report["images"].startswith("2 random normal images 3x32x32")
    assert_timed(report["methods"]["raw_attention"], report["fwd_bwd_images_per_s"])


def test_unknown_method_is_refused_listing_the_valid_ones(capsys):
    with pytest.raises(BenchmarkError) as caught:
        check_methods("gae,no_such_method")
    assert isinstance(caught.value, XaikitError)
    message = str(caught.value)
    assert "'no_such_method'" in message and all(name in message for name in xaikit.list_methods())
    assert main(["--model", "demo-shapes-vit", "--batch-size", "2", "--methods", "gae,no_such_method"]) == 2
    error = capsys.readouterr().err
    assert "no_such_method" in error and "rollout" in error and "'all'" in error


def test_method_list_forms():
    assert check_methods("all") == check_methods(None) == xaikit.list_methods()
    assert check_methods(" gae , random,gae ") == ["gae", "random"]
    with pytest.raises(BenchmarkError, match="no method given"):
        check_methods(" , ")


class _Broken(base.Explainer):
    """A registered method that fails while it runs (after its forward pass)."""

    name = "broken_for_bench_test"
    needs_class_token = False

    def token_scores(self, recorder, logits, classes):
        raise RuntimeError("deliberately broken")


def test_a_failing_method_is_reported_and_the_others_are_timed(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(base._REGISTRY, _Broken.name, _Broken)
    out = tmp_path / "bench.json"
    status = main(["--model", "demo-shapes-vit", "--batch-size", "2", "--repeats", "1",
                   "--methods", f"{_Broken.name},random", "--json", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    broken = report["methods"][_Broken.name]
    assert broken["images_per_s"] is None and broken["ratio_to_fwd_bwd"] is None
    assert broken["error"] == "RuntimeError: deliberately broken"
    assert_timed(report["methods"]["random"], report["fwd_bwd_images_per_s"])
    assert "RuntimeError: deliberately broken" in capsys.readouterr().out


def test_a_method_that_refuses_the_model_is_reported():
    # no class token, mean-pooled head: class-token methods refuse it, the random floor runs
    model = tiny_vit(class_token=False, global_pool="avg")
    report = benchmark(model, torch.randn(2, 3, 32, 32), ["gae", "random"], repeats=1)
    assert report["methods"]["gae"]["images_per_s"] is None
    assert report["methods"]["gae"]["error"].startswith("InvalidParameterError:") and "class token" in report["methods"]["gae"]["error"]
    assert_timed(report["methods"]["random"], report["fwd_bwd_images_per_s"])


def test_cuda_without_cuda_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--model", "demo-shapes-vit", "--batch-size", "2", "--device", "cuda"]) == 2
    error = capsys.readouterr().err
    assert "CUDA is not available" in error and "--device cpu" in error


@pytest.mark.parametrize("argv", [
    ["--batch-size", "4"],  # no --model
    ["--model", "demo-shapes-vit"],  # no --batch-size
    ["--model", "demo-shapes-vit", "--batch-size", "0"],
    ["--model", "demo-shapes-vit", "--batch-size", "four"],
    ["--model", "demo-shapes-vit", "--batch-size", "4", "--repeats", "0"],
    ["--model", "demo-shapes-vit", "--batch-size", "4", "--device", "tpu"],
    ["--model", "x", "--batch-size", "4", "--pretrained", "--random-weights"],
])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "usage: xaikit bench" in capsys.readouterr().err


def test_arguments_as_a_subcommand():
    # how xaikit/cli.py wires `xaikit bench`: add_arguments on a subparser, run_from_args on the result
    parser = argparse.ArgumentParser(prog="xaikit")
    add_arguments(parser.add_subparsers(dest="command").add_parser("bench"))
    args = parser.parse_args(["bench", "--model", "demo-cifar10-vit", "--batch-size", "64"])
    assert (args.model, args.batch_size, args.device, args.methods, args.repeats) == ("demo-cifar10-vit", 64, "cpu", "all", 3)
    assert args.pretrained is True and args.json_file is None and args.images == "auto"
    args = parser.parse_args(["bench", "--model", "m", "--batch-size", "8", "--random-weights", "--device", "cuda",
                              "--methods", "gae,rollout", "--json", "out.json", "--repeats", "5", "--threads", "1"])
    assert args.pretrained is False and args.device == "cuda" and args.methods == "gae,rollout"
    assert str(args.json_file) == "out.json" and args.repeats == 5 and args.threads == 1
    assert parser.parse_args(["bench", "--model", "m", "--batch-size", "8", "--no-pretrained"]).pretrained is False
    assert callable(run_from_args)


def test_missing_pretrained_weights_suggest_random_weights(monkeypatch, capsys):
    def offline(name, **options):
        assert options == {}  # pretrained is load_model's default unless --random-weights
        raise WeightsUnavailableError(f"cannot download the pretrained weights of {name!r}")

    monkeypatch.setattr(xaikit, "load_model", offline)
    assert main(["--model", "vit_tiny_patch16_224", "--batch-size", "2", "--methods", "random"]) == 2
    error = capsys.readouterr().err
    assert "cannot download the pretrained weights of 'vit_tiny_patch16_224'" in error and "--random-weights" in error


def test_reference_loops_time_the_authors_per_sample_procedure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = main(["--model", "demo-shapes-vit", "--batch-size", "2", "--repeats", "1", "--reference-loops",
                   "--methods", "cdam,smooth_cdam,integrated_cdam", "--json", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    assert list(report["reference_loops"]) == ["smooth_cdam", "integrated_cdam"]  # cdam has no sampling loop
    for name, entry in report["reference_loops"].items():
        assert_timed(entry, report["fwd_bwd_images_per_s"])
        assert entry["speedup"] == pytest.approx(entry["seconds_per_batch"] / report["methods"][name]["seconds_per_batch"])
    assert "(per-sample loop)" in capsys.readouterr().out
    assert "reference_loops" not in benchmark(tiny_vit(), torch.randn(2, 3, 32, 32), ["smooth_cdam"], repeats=1)
