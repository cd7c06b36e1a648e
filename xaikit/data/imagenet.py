"""ImageNet validation images from a local folder (ImageNet cannot be redistributed).

Layout (that of ``ILSVRC2012_img_val`` plus the usual label files):
``<root>/images/ILSVRC2012_val_XXXXXXXX.JPEG``, ``<root>/val.txt`` (``<file> <class index>``
for the validation images) and ``<root>/synset_words.txt`` (``<wnid> <names>`` in the
standard 0..999 class order, the order of timm's ImageNet models). ``root`` defaults to
``$XAIKIT_IMAGENET_VAL``, else the offline sample beside the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import DataUnavailableError

IMAGENET_VAL_ENV = "XAIKIT_IMAGENET_VAL"
_SHARED_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet-val-sample"


@dataclass(frozen=True)
class LabelledImages:
    """PIL images with their class index, file name, and the data set's class names."""

    images: list
    labels: list[int]
    files: list[str]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)


def imagenet_val_root(root: str | os.PathLike | None = None) -> Path:
    candidates = [Path(root)] if root else [Path(os.environ[IMAGENET_VAL_ENV])] if IMAGENET_VAL_ENV in os.environ else [_SHARED_SAMPLE]
    for folder in candidates:
        if (folder / "images").is_dir() and (folder / "val.txt").is_file() and (folder / "synset_words.txt").is_file():
            return folder
    raise DataUnavailableError(
        f"no ImageNet validation images found at {', '.join(map(str, candidates))}. ImageNet is not "
        "redistributable: download ILSVRC2012_img_val.tar after registering at https://image-net.org, "
        "extract it into <root>/images/, add val.txt (<file> <class index>) and synset_words.txt "
        f"(standard class order), and set ${IMAGENET_VAL_ENV}=<root>"
    )


def load_imagenet_val(n: int | None = None, *, root: str | os.PathLike | None = None) -> LabelledImages:
    """The first `n` validation images (sorted by file name) under `root`, as RGB PIL images."""
    folder = imagenet_val_root(root)
    class_names = tuple(
        line.split(" ", 1)[1].split(",")[0].strip() for line in (folder / "synset_words.txt").read_text().splitlines() if line
    )
    labels_by_file = dict(line.split() for line in (folder / "val.txt").read_text().splitlines() if line.strip())
    files = sorted(p.name for p in (folder / "images").iterdir() if p.name in labels_by_file)[:n]
    images = [Image.open(folder / "images" / name).convert("RGB") for name in files]
    return LabelledImages(images, [int(labels_by_file[f]) for f in files], files, class_names)
