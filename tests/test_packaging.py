"""The project's set-up files agree with each other, and the chosen versions work together."""

import re
import tomllib
import warnings
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def normalised(requirements):
    return {(Requirement(r).name.lower().replace("_", "-"), str(Requirement(r).specifier)) for r in requirements}


def test_environment_yml_declares_the_pyproject_dependencies():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip_section = next(item["pip"] for item in environment if isinstance(item, dict))
    assert "-e ." in pip_section
    assert normalised(r for r in pip_section if r != "-e .") == normalised(pyproject)


def test_required_dependencies_are_declared():
    names = {name for name, _ in normalised(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])}
    wanted = "torch torchvision timm grad-cam papermill jupyter-book seaborn pandas scipy scikit-image scikit-learn pooch safetensors tqdm"
    assert set(wanted.split()) <= names


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert "-m venv" in makefile and "-e '.[dev]'" in makefile


def test_seaborn_plots_work_with_the_installed_pandas(tmp_path):
    """pandas is not capped below 3: this fails if seaborn's plots break or warn on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import seaborn as sns

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "method": np.repeat(["gae", "rollout", "raw"], 20),
            "score": rng.random(60),
            "step": np.tile(np.arange(20), 3),
            "split": pd.Categorical(np.tile(["a", "b"], 30)),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=matplotlib.MatplotlibDeprecationWarning)
        fig, axes = plt.subplots(2, 3)
        sns.barplot(frame, x="method", y="score", ax=axes[0, 0])
        sns.lineplot(frame, x="step", y="score", hue="method", ax=axes[0, 1])
        sns.heatmap(frame.pivot_table(index="method", columns="step", values="score"), ax=axes[0, 2])
        sns.boxplot(frame, x="split", y="score", hue="method", ax=axes[1, 0])
        sns.histplot(frame, x="score", hue="method", ax=axes[1, 1])
        sns.pointplot(frame, x="method", y="score", ax=axes[1, 2])
        grid = sns.relplot(frame, x="step", y="score", col="method", kind="line")
        fig.savefig(tmp_path / "plots.png")
        grid.savefig(tmp_path / "grid.png")
    plt.close("all")
    assert (tmp_path / "plots.png").stat().st_size > 1000
