"""The training loop behind the demo models: an interrupted run resumes to the same weights."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from xaikit.train import RECIPES, train

TINY = dataclasses.replace(
    RECIPES["demo-shapes-vit"], data_kwargs={"n_train": 256, "n_test": 64}, monitor_size=64, epochs=2, batch_size=32
)  # 8 steps per epoch, 16 in all


def quiet(_message: str) -> None:
    pass


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    straight = train(TINY, out_dir=tmp_path / "straight", work_dir=tmp_path / "straight", log=quiet)

    messages = []
    stopped = train(TINY, out_dir=tmp_path / "resumed", work_dir=tmp_path / "resumed", max_steps=11, log=quiet)
    assert stopped == {"step": 11, "train_seconds": stopped["train_seconds"], "finished": False}
    assert not (tmp_path / "resumed" / f"{TINY.name}.safetensors").exists()  # no weights before the end
    resumed = train(TINY, out_dir=tmp_path / "resumed", work_dir=tmp_path / "resumed", log=messages.append)

    assert messages[0].startswith(f"resumed {TINY.name} at step 11/16")
    assert [e["monitor_accuracy"] for e in resumed["history"]] == [e["monitor_accuracy"] for e in straight["history"]]
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    reference = load_file(str(tmp_path / "straight" / f"{TINY.name}.safetensors"))
    weights = load_file(str(tmp_path / "resumed" / f"{TINY.name}.safetensors"))
    assert weights.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(weights[key], reference[key], rtol=0, atol=0, msg=key)


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path):
    train(TINY, out_dir=tmp_path, work_dir=tmp_path, max_steps=1, log=quiet)
    with pytest.raises(RuntimeError, match="another recipe; delete it"):
        train(dataclasses.replace(TINY, lr=2e-3), out_dir=tmp_path, work_dir=tmp_path, max_steps=1, log=quiet)
