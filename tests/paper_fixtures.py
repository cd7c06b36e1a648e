"""Small files in the real formats of the paper profile's data and weights, written in a folder.

The paper profile reads ImageNet-Segmentation (``gtsegs_ijcv.mat``, MATLAB v7.3 / HDF5 with
object references), the CIFAR-10 and CIFAR-100 binary archives (through their manifests and
the cache), an ImageNet validation folder (``images/``, ``val.txt``, ``synset_words.txt``) and
published timm weights. `paper_environment` writes a tiny copy of each and returns the
environment variables that point xaikit (and a notebook kernel, which inherits them) at them,
with the Hugging Face Hub made unreachable so nothing is downloaded.

The CIFAR images are learnable in a few steps (each class a flat colour plus noise), so a
fine-tuning run on them ends above chance level and writes its checkpoint. The writers of
single files (`write_gtsegs`, `write_tar`, `cifar100_records`, `write_imagenet_folder`) are
also used by tests/test_data_tokentm.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FINE_NAMES = [f"fine_class_{i:02d}" for i in range(100)]
COARSE_NAMES = [f"superclass_{i:02d}" for i in range(20)]

# Stand-ins for the paper's ViTs (DeiT-B, ViT-B/16, ViT-L/16: timm VisionTransformers with a class
# token read by the classifier and 16 x 16 patches): timm's own test ViT, of the same kind (160 x 160
# inputs, 6 blocks of width 64, 0.37 M parameters), some thirty times cheaper than even deit_tiny,
# so every method runs in a blink. (test_vit2 and test_vit3 have no class token.) Its random
# weights are written into XAIKIT_WEIGHTS_DIR under the name xaikit.load_model looks for.
PAPER_STAND_INS = {
    "deit": "test_vit.r160_in1k",  # for deit_base_patch16_224.fb_in1k
    "vit": "test_vit.r160_in1k",  # for vit_base_patch16_224.orig_in21k_ft_in1k and vit_large_patch16_224
}


# ----------------------------------------------------------------------------- single files


def write_tar(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    """A gzipped tar archive holding `entries` (member name, bytes)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_gtsegs(path: Path, images: list[np.ndarray], masks: list[np.ndarray], mask_dtype=np.uint8) -> Path:
    """A MATLAB v7.3 file with gtsegs_ijcv.mat's structure: a 512-byte MATLAB header, the struct
    `value` with (N, 1) cell arrays `img` and `gt` of object references into #refs#; images stored
    column-major as (3, W, H), each mask inside a 1x1 cell as (W, H)."""
    count = len(images)
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        value = f.create_group("value")
        value.attrs["MATLAB_class"] = np.bytes_("struct")
        img_refs = np.empty((count, 1), dtype=h5py.ref_dtype)
        gt_refs = np.empty((count, 1), dtype=h5py.ref_dtype)
        for index, (image, mask) in enumerate(zip(images, masks)):
            stored = refs.create_dataset(f"img{index}", data=np.ascontiguousarray(image.transpose(2, 1, 0)))
            stored.attrs["MATLAB_class"] = np.bytes_("uint8")
            img_refs[index, 0] = stored.ref
            stored_mask = refs.create_dataset(f"mask{index}", data=np.ascontiguousarray(mask.T).astype(mask_dtype))
            stored_mask.attrs["MATLAB_class"] = np.bytes_("logical")
            cell = refs.create_dataset(f"cell{index}", data=np.array([[stored_mask.ref]], dtype=h5py.ref_dtype))
            cell.attrs["MATLAB_class"] = np.bytes_("cell")
            gt_refs[index, 0] = cell.ref
        for key, data in (("img", img_refs), ("gt", gt_refs)):
            value.create_dataset(key, data=data).attrs["MATLAB_class"] = np.bytes_("cell")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: xaikit tests HDF5 schema 1.00 .".ljust(116)
    with open(path, "r+b") as handle:
        handle.write(header + bytes(8) + b"\x00\x02IM")
    return path


def cifar10_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Official CIFAR-10 binary records: the label byte, then the R, G and B 32x32 planes."""
    planes = np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2)).reshape(len(images), -1)
    return np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], planes], axis=1).tobytes()


def cifar100_records(images: np.ndarray, coarse: np.ndarray, fine: np.ndarray) -> bytes:
    """Official CIFAR-100 binary records, built byte by byte: coarse label, fine label, R, G, B planes."""
    out = bytearray()
    for image, coarse_label, fine_label in zip(images, coarse, fine):
        out.append(int(coarse_label))
        out.append(int(fine_label))
        for channel in range(3):
            out.extend(int(v) for v in image[:, :, channel].reshape(-1))
    return bytes(out)


def write_imagenet_folder(root: Path, numbers: list[int], *, full: bool = True, size: tuple[int, int] = (8, 6),
                          pixels: dict[int, np.ndarray] | None = None) -> Path:
    """<root>/images/ILSVRC2012_val_XXXXXXXX.JPEG, val.txt and synset_words.txt.

    Images are flat (``number % 256``, 10, 20) pictures of `size` (width, height), or the
    uint8 (H, W, 3) arrays `pixels` gives per number. With `full`, val.txt lists all 50,000
    validation files (class ``7 * i % 1000``), as the official file does.
    """
    (root / "images").mkdir(parents=True)
    for number in numbers:
        picture = (Image.fromarray(pixels[number]) if pixels and number in pixels
                   else Image.new("RGB", size, (number % 256, 10, 20)))
        picture.save(root / "images" / f"ILSVRC2012_val_{number:08d}.JPEG")
    listed = range(1, 50_001) if full else numbers
    (root / "val.txt").write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG {(7 * i) % 1000}\n" for i in listed))
    (root / "synset_words.txt").write_text("".join(f"n{i:08d} class {i}, other name\n" for i in range(1000)))
    return root


# ----------------------------------------------------------------------------- learnable CIFAR-like images


def colour_classes(labels: np.ndarray, seed: int, side: int = 32) -> np.ndarray:
    """uint8 (N, side, side, 3) images: class ``c`` is the flat colour ``palette[c]`` plus +-20 noise."""
    palette = np.random.default_rng(7).integers(30, 226, (max(100, int(labels.max()) + 1), 3))
    noise = np.random.default_rng(seed).integers(-20, 21, (len(labels), side, side, 3))
    return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def balanced_labels(classes: int, per_class: int) -> np.ndarray:
    return np.tile(np.arange(classes), per_class).astype(np.int64)


def write_cifar10_binary(path: Path, *, train_per_class: int = 8, test_per_class: int = 4) -> dict:
    """``cifar-10-binary.tar.gz``: five train batches, the test batch and batches.meta.txt."""
    train_labels, test_labels = balanced_labels(10, train_per_class), balanced_labels(10, test_per_class)
    parts = {"train": (colour_classes(train_labels, 0), train_labels), "test": (colour_classes(test_labels, 1), test_labels)}
    batches = np.array_split(np.arange(len(train_labels)), 5)
    entries = [("cifar-10-batches-bin/batches.meta.txt", ("\n".join(CIFAR10_NAMES) + "\n\n").encode())]
    entries += [(f"cifar-10-batches-bin/data_batch_{i + 1}.bin", cifar10_records(parts["train"][0][b], train_labels[b]))
                for i, b in enumerate(batches)]
    entries.append(("cifar-10-batches-bin/test_batch.bin", cifar10_records(*parts["test"])))
    write_tar(path, entries)
    return parts


def write_cifar10_jpeg(folder: Path, *, train_per_class: int = 2, test_per_class: int = 2) -> Path:
    """The offline JPEG copy's layout: ``train.tar.gz`` and ``test.tar.gz`` of ``<split>/<class>/NNNN.jpg``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class, seed in (("train", train_per_class, 2), ("test", test_per_class, 3)):
        labels = balanced_labels(10, per_class)
        entries = []
        for index, (image, label) in enumerate(zip(colour_classes(labels, seed), labels)):
            encoded = io.BytesIO()
            Image.fromarray(image).save(encoded, format="JPEG", quality=95)
            entries.append((f"{split}/{CIFAR10_NAMES[label]}/{index:04d}.jpg", encoded.getvalue()))
        write_tar(folder / f"{split}.tar.gz", entries)
    return folder


def write_cifar100_binary(path: Path, *, classes: int = 10, train_per_class: int = 8, test_per_class: int = 4) -> dict:
    """``cifar-100-binary.tar.gz`` whose images belong to the first `classes` fine classes."""
    parts = {}
    for split, per_class, seed in (("train", train_per_class, 4), ("test", test_per_class, 5)):
        fine = balanced_labels(classes, per_class)
        parts[split] = (colour_classes(fine, seed), fine // 5, fine)
    entries = [
        ("cifar-100-binary/fine_label_names.txt", ("\n".join(FINE_NAMES) + "\n\n").encode()),
        ("cifar-100-binary/coarse_label_names.txt", ("\n".join(COARSE_NAMES) + "\n").encode()),
    ]
    entries += [(f"cifar-100-binary/{split}.bin", cifar100_records(*parts[split])) for split in ("train", "test")]
    write_tar(path, entries)
    return parts


# ----------------------------------------------------------------------------- weights


def write_random_weights(path: Path, model_name: str, **timm_kwargs) -> Path:
    """Seeded random weights of the timm model `model_name` (with `timm_kwargs`) as safetensors."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, **timm_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# ----------------------------------------------------------------------------- everything at once


@dataclass
class PaperFiles:
    """What `paper_environment` wrote, and the variables that point xaikit at it."""

    root: Path
    env: dict[str, str]
    weights: dict[str, Path] = field(default_factory=dict)  # stand-in name (or FINETUNE_START) -> weights file
    seg_images: int = 0
    imagenet_images: int = 0


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


FINETUNE_START = "finetune-start"  # a small DeiT's random "ImageNet" weights to fine-tune from
FINETUNE_START_KWARGS = {"depth": 2, "img_size": 64}


def paper_environment(root: Path, *, seg_images: int = 4, imagenet_images: int = 4) -> PaperFiles:
    """Write the paper profile's data and weights, small, under `root`; return them and their variables.

    * ``XAIKIT_IMAGENET_SEG``: a `seg_images`-image ``gtsegs_ijcv.mat`` (non-square images, blob masks);
    * ``XAIKIT_CACHE_DIR``: the cache, holding ``cifar10/cifar-10-binary.tar.gz`` and
      ``cifar100/cifar-100-binary.tar.gz`` where `load_cifar10(source="binary")` and `load_cifar100` look;
    * ``XAIKIT_MANIFEST_DIR``: the repository's manifests with those archives' size and hashes;
    * ``XAIKIT_CIFAR10_JPEG``: a small JPEG copy (what ``load_cifar10()`` reads first);
    * ``XAIKIT_IMAGENET_VAL``: an ImageNet-style folder with `imagenet_images` 64 x 48 images;
    * ``XAIKIT_WEIGHTS_DIR``: seeded random weights of the stand-ins `PAPER_STAND_INS` (timm's
      defaults, 1,000 classes), saved as ``<name>.safetensors``;
    * ``weights[FINETUNE_START]``: random 1,000-class weights of a ``deit_tiny_patch16_224`` of
      `FINETUNE_START_KWARGS` (2 blocks, 64 x 64), to fine-tune from quickly;
    * ``weights["cifar10"]``, ``weights["cifar100"]``: random weights of the DeiT stand-in with a
      10- and a 100-class head, standing in for the fine-tuned CIFAR DeiT-Bs (outside
      ``XAIKIT_WEIGHTS_DIR``, so they never pass for the real ones);
    * ``HF_ENDPOINT`` unreachable and an empty ``HF_HUB_CACHE``: nothing is downloaded.
    """
    root = Path(root)
    cache, manifests, weights = root / "cache", root / "manifests", root / "weights"
    manifests.mkdir(parents=True)
    env = {
        "XAIKIT_CACHE_DIR": str(cache),
        "XAIKIT_MANIFEST_DIR": str(manifests),
        "XAIKIT_WEIGHTS_DIR": str(weights),
        "XAIKIT_CIFAR10_JPEG": str(write_cifar10_jpeg(root / "cifar10-jpeg")),
        "HF_ENDPOINT": "https://hub.invalid",  # RFC 2606: never resolves
        "HF_HUB_CACHE": str(root / "hf-cache"),
    }

    archives = {"cifar10": cache / "cifar10" / "cifar-10-binary.tar.gz", "cifar100": cache / "cifar100" / "cifar-100-binary.tar.gz"}
    for archive in archives.values():
        archive.parent.mkdir(parents=True)
    write_cifar10_binary(archives["cifar10"])
    write_cifar100_binary(archives["cifar100"])
    for source in sorted((ROOT / "data_manifests").glob("*.json")):
        entry = json.loads(source.read_text())
        archive = archives.get(entry["name"])
        if archive is not None:
            entry.update(size=archive.stat().st_size, md5=_md5(archive))
            if entry["sha256"] is not None:
                entry["sha256"] = _sha256(archive)
        (manifests / source.name).write_text(json.dumps(entry, indent=1))

    rng = np.random.default_rng(0)
    images, masks = [], []
    for index in range(seg_images):
        height, width = 48 + 8 * (index % 3), 64 - 8 * (index % 2)  # non-square, so a wrong transpose fails
        images.append(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4 : 3 * height // 4, width // 3 :] = 1
        masks.append(mask)
    env["XAIKIT_IMAGENET_SEG"] = str(write_gtsegs(root / "gtsegs_ijcv.mat", images, masks))

    numbers = list(range(1, imagenet_images + 1))
    pixels = {n: rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for n in numbers}
    env["XAIKIT_IMAGENET_VAL"] = str(write_imagenet_folder(root / "imagenet-val", numbers, pixels=pixels))

    written = {name: write_random_weights(weights / f"{name}.safetensors", name) for name in set(PAPER_STAND_INS.values())}
    for data, classes in (("cifar10", 10), ("cifar100", 100)):
        written[data] = write_random_weights(root / "finetuned" / f"{PAPER_STAND_INS['deit']}-{data}.safetensors",
                                             PAPER_STAND_INS["deit"], num_classes=classes)
    written[FINETUNE_START] = write_random_weights(root / f"{FINETUNE_START}.safetensors", "deit_tiny_patch16_224",
                                                   **FINETUNE_START_KWARGS)
    return PaperFiles(root, env, written, seg_images, imagenet_images)
