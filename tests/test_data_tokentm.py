"""Data of the TokenTM chapter: ImageNet-Segmentation, CIFAR-100, ImageNet validation (+ ReaL).

No network: every loader runs on small files written here in the real formats (a MATLAB v7.3
HDF5 file with object references, a CIFAR-100 binary archive, an ImageNet-style folder), and
downloads go through pooch's downloader hook with local files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from conftest import small_vit
from paper_fixtures import (
    COARSE_NAMES,
    FINE_NAMES,
    cifar100_records,
    write_gtsegs,
    write_imagenet_folder,
    write_tar,
)
import xaikit.data.manifests
from xaikit.data import load_examples
from xaikit.data.cifar100 import Cifar100Split, load_cifar100, read_cifar100_binary
from xaikit.data.imagenet import (
    check_imagenet_val,
    load_imagenet_val,
    load_real_labels,
    sample_imagenet_val,
)
from xaikit.data.imagenet_seg import ImageNetSegmentation, imagenet_seg_file, transform_images
from xaikit.data.manifests import (
    Manifest,
    cached_path,
    fetch,
    hash_record_path,
    load_manifest,
    sha256_of,
)
from xaikit.errors import DataIntegrityError, DataUnavailableError, InvalidParameterError
from xaikit.imaging import preprocess

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGENET = ROOT.parent / "shared" / "data" / "imagenet-val-sample"


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Each test gets its own cache and sees no user configuration."""
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path / "cache"))
    # the warning comes once per process: an earlier test that read a first copy must not hide it
    monkeypatch.setattr(xaikit.data.manifests, "_WARNED_UNVERIFIED", set())
    for name in ("XAIKIT_MANIFEST_DIR", "XAIKIT_IMAGENET_SEG", "XAIKIT_IMAGENET_VAL"):
        monkeypatch.delenv(name, raising=False)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def copying_downloader(source: Path, calls: list[str]):
    def download(url, output_file, pooch_instance):
        calls.append(url)
        shutil.copyfile(source, output_file)

    return download


def refusing_downloader(url, output_file, pooch_instance):
    raise AssertionError(f"network access attempted for {url}")


def manifest_dir_with(tmp_path: Path, name: str, **changes) -> Path:
    """A manifest folder holding the repository's entry `name` with `changes` applied."""
    folder = tmp_path / "manifests"
    folder.mkdir(exist_ok=True)
    entry = json.loads((ROOT / "data_manifests" / f"{name}.json").read_text())
    entry.update(changes)
    (folder / f"{name}.json").write_text(json.dumps(entry))
    return folder


# ----------------------------------------------------------------------------- manifests


def test_tokentm_manifests_name_the_official_files_and_their_published_checks():
    cifar100 = load_manifest("cifar100")
    assert cifar100.url == "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
    assert cifar100.size == 168513733 and cifar100.sha256 is None
    assert cifar100.known_hash == "md5:03b5dce01913d631647c71ecec9e9cb8"
    assert "cifar-100-binary/test.bin" in cifar100.members and "Krizhevsky" in cifar100.licence

    seg = load_manifest("imagenet-seg")
    assert seg.url == "http://calvin-vision.net/bigstuff/proj-imagenet/data/gtsegs_ijcv.mat"
    assert seg.filename == "gtsegs_ijcv.mat"
    assert seg.size is None and seg.sha256 is None and seg.md5 is None and seg.known_hash is None
    assert "trust on first use" in seg.description and "XAIKIT_IMAGENET_SEG" in seg.description

    val = load_manifest("imagenet-val")
    assert val.filename == "ILSVRC2012_img_val.tar" and val.size == 6744924160
    assert val.md5 == "29b22e2961454d5413ddabcf34fc5622"
    assert "register" in val.obtain.lower() and "XAIKIT_IMAGENET_VAL" in val.obtain


@pytest.mark.parametrize(
    "changes, problem",
    [
        (dict(sha256=None, md5="z" * 32), "'md5' must be 32 hexadecimal"),
        (dict(sha256="abc"), "'sha256' must be 64 hexadecimal digits, or null"),
        (dict(size=0), "'size' must be a positive integer"),
        (dict(obtain=" "), "'obtain' must be a non-empty string"),
    ],
)
def test_manifest_schema_allows_null_hashes_but_checks_what_is_given(tmp_path, monkeypatch, changes, problem):
    monkeypatch.setenv("XAIKIT_MANIFEST_DIR", str(manifest_dir_with(tmp_path, "cifar100", **changes)))
    with pytest.raises(DataIntegrityError, match=problem):
        load_manifest("cifar100")


# ----------------------------------------------------------------------------- fetch without a published sha256


def tiny_manifest(file: Path, **fields) -> Manifest:
    base = dict(
        name="tiny", url=f"https://example.invalid/{file.name}", filename=file.name, size=file.stat().st_size,
        sha256=None, licence="test data", description="written by the test",
    )
    return Manifest(**{**base, **fields})


def test_fetch_checks_the_published_md5_and_records_the_sha256(tmp_path):
    payload = tmp_path / "data.bin"
    payload.write_bytes(b"published md5 only" * 100)
    manifest = tiny_manifest(payload, md5=md5_of(payload))
    calls: list[str] = []

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file checked against a published md5 needs no warning
        local = fetch(manifest, downloader=copying_downloader(payload, calls), progress=False)

    assert local == cached_path(manifest) and local.read_bytes() == payload.read_bytes() and calls == [manifest.url]
    record = json.loads(hash_record_path(manifest).read_text())
    assert record["sha256"] == sha256_of(payload) and record["size"] == payload.stat().st_size
    assert manifest.md5 in record["checked_against"]
    assert fetch(manifest, downloader=refusing_downloader, progress=False) == local

    corrupted = tmp_path / "corrupted.bin"
    corrupted.write_bytes(payload.read_bytes()[:-7])
    local.unlink()
    with pytest.raises(DataIntegrityError) as caught:
        fetch(manifest, downloader=copying_downloader(corrupted, []), progress=False)
    assert f"md5 expected {manifest.md5} but got {md5_of(corrupted)}" in str(caught.value)


def test_fetch_without_any_published_hash_trusts_the_first_copy_and_warns_once(tmp_path):
    payload = tmp_path / "gtsegs.mat"
    payload.write_bytes(b"first copy" * 50)
    manifest = tiny_manifest(payload, size=None)

    with pytest.warns(UserWarning, match="could not be checked against a published hash"):
        local = fetch(manifest, downloader=copying_downloader(payload, []), progress=False)
    assert json.loads(hash_record_path(manifest).read_text())["sha256"] == sha256_of(payload)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verified against the record now: no second warning
        assert fetch(manifest, downloader=refusing_downloader, progress=False) == local

    local.write_bytes(b"another version" * 50)  # replaced (or truncated) after the first use
    with pytest.raises(DataIntegrityError, match=r"not the copy of gtsegs\.mat first used here") as caught:
        fetch(manifest, downloader=refusing_downloader, progress=False)
    assert str(hash_record_path(manifest)) in str(caught.value)


def test_fetch_never_downloads_a_manifest_that_must_be_obtained_by_hand(tmp_path):
    payload = tmp_path / "registered.tar"
    payload.write_bytes(b"behind a registration" * 10)
    manifest = tiny_manifest(payload, md5=md5_of(payload), obtain="Register at https://example.invalid first.")

    with pytest.raises(DataUnavailableError) as caught:
        fetch(manifest, downloader=refusing_downloader, progress=False)
    message = str(caught.value)
    assert "cannot be downloaded automatically" in message and manifest.obtain in message
    assert str(cached_path(manifest)) in message

    cached_path(manifest).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(payload, cached_path(manifest))
    assert fetch(manifest, downloader=refusing_downloader, progress=False) == cached_path(manifest)


# ----------------------------------------------------------------------------- ImageNet-Segmentation


def seg_samples(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Three non-square images (so a wrong transpose fails) with blob masks."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for height, width in ((20, 31), (37, 18), (25, 25)):
        images.append(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4 : 3 * height // 4, width // 3 :] = 1
        masks.append(mask)
    return images, masks


def chefer_reference_sample(path: Path, index: int, size: int = 224):
    """What Transformer-Explainability's data/Imagenet.py and imagenet_seg_eval.py compute for one item."""
    with h5py.File(path, "r") as f:
        img = np.array(f[f["/value/img"][index, 0]]).transpose((2, 1, 0))
        target = np.array(f[f[f["/value/gt"][index, 0]][0, 0]]).transpose((1, 0))
    img_trans = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
    )
    lbl_trans = transforms.Compose([transforms.Resize((size, size), Image.NEAREST)])
    image = img_trans(Image.fromarray(img).convert("RGB"))
    label = torch.from_numpy(np.array(lbl_trans(Image.fromarray(target))).astype("int32")).long()
    return image, label


def test_imagenet_seg_reads_images_and_masks_in_their_original_orientation(tmp_path):
    images, masks = seg_samples()
    path = write_gtsegs(tmp_path / "gtsegs_ijcv.mat", images, masks)
    assert h5py.is_hdf5(path) and path.read_bytes()[:10] == b"MATLAB 7.3"

    with ImageNetSegmentation(path, verify=False) as data:
        assert len(data) == 3
        for index in range(3):
            image, mask = data[index]
            assert image.dtype == np.uint8 and image.shape == images[index].shape
            np.testing.assert_array_equal(image, images[index])
            np.testing.assert_array_equal(mask, masks[index])
        np.testing.assert_array_equal(data[-1][0], images[2])
        with pytest.raises(IndexError):
            data[3]


def test_imagenet_seg_batches_match_the_reference_transforms(tmp_path):
    images, masks = seg_samples(1)
    path = write_gtsegs(tmp_path / "gtsegs_ijcv.mat", images, masks)
    data = ImageNetSegmentation(path, verify=False)

    batches = list(data.batches(batch_size=2))

    assert [len(b) for b in batches] == [2, 1]
    assert [b.indices.tolist() for b in batches] == [[0, 1], [2]]
    for batch in batches:
        assert batch.images.shape[1:] == (3, 224, 224) and batch.masks.shape[1:] == (224, 224)
        assert batch.masks.dtype == torch.int64
        for row, index in enumerate(batch.indices):
            reference_image, reference_mask = chefer_reference_sample(path, int(index))
            torch.testing.assert_close(batch.images[row], reference_image, rtol=0, atol=0)
            torch.testing.assert_close(batch.masks[row], reference_mask, rtol=0, atol=0)
    (subset,) = data.batches(batch_size=8, indices=[2, 0], size=32)
    assert subset.indices.tolist() == [2, 0] and subset.images.shape == (2, 3, 32, 32)
    torch.testing.assert_close(subset.masks[1], chefer_reference_sample(path, 0, size=32)[1], rtol=0, atol=0)
    with pytest.raises(InvalidParameterError, match="batch_size must be a positive int"):
        next(data.batches(batch_size=0))
    with pytest.raises(IndexError, match="index 5 is out of range for 3 images"):
        next(data.batches(indices=[0, 5]))


def test_imagenet_seg_batches_for_a_model_use_its_size_and_normalisation(tmp_path):
    images, masks = seg_samples(2)
    data = ImageNetSegmentation(write_gtsegs(tmp_path / "gtsegs_ijcv.mat", images, masks), verify=False)
    model = small_vit("deit_distilled")  # 64x64 input, ImageNet mean/std (not Chefer's 0.5/0.5)

    (batch,) = data.batches(batch_size=3, model=model)

    torch.testing.assert_close(batch.images, preprocess(model, images, squash=True))
    assert not torch.allclose(batch.images, transform_images(images, size=64))  # the model's mean/std, not 0.5
    expected_masks = [np.asarray(Image.fromarray(m).resize((64, 64), Image.NEAREST)) for m in masks]
    np.testing.assert_array_equal(batch.masks.numpy(), np.stack(expected_masks))
    with pytest.raises(InvalidParameterError, match="size=224 conflicts with the model's input size 64"):
        next(data.batches(model=model, size=224))


def test_imagenet_seg_local_copy_is_trusted_on_first_use_then_verified(tmp_path, monkeypatch):
    images, masks = seg_samples()
    (tmp_path / "local").mkdir()
    local = write_gtsegs(tmp_path / "local" / "gtsegs_ijcv.mat", images, masks)
    monkeypatch.setenv("XAIKIT_IMAGENET_SEG", str(local))
    # the first-use record is kept in the cache: an own cache, so an earlier run's record is never found
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path / "cache"))
    # the warning comes once per process: an earlier test that read a first copy must not hide it
    monkeypatch.setattr(xaikit.data.manifests, "_WARNED_UNVERIFIED", set())

    with pytest.warns(UserWarning, match="could not be checked against a published hash"):
        assert len(ImageNetSegmentation()) == 3
    record = json.loads(hash_record_path(load_manifest("imagenet-seg")).read_text())
    assert record["sha256"] == sha256_of(local)
    assert len(ImageNetSegmentation()) == 3  # the same file passes the recorded check

    write_gtsegs(local, images[:2], masks[:2])  # another version under the same name
    with pytest.raises(DataIntegrityError, match="first used here"):
        ImageNetSegmentation()
    assert len(ImageNetSegmentation(verify=False)) == 2

    monkeypatch.setenv("XAIKIT_IMAGENET_SEG", str(tmp_path / "absent.mat"))
    with pytest.raises(DataUnavailableError, match=r"absent\.mat \(XAIKIT_IMAGENET_SEG\)"):
        ImageNetSegmentation()


def test_imagenet_seg_missing_offline_names_url_cache_and_environment_variable(tmp_path, monkeypatch):
    manifest = load_manifest("imagenet-seg")
    with pytest.raises(DataUnavailableError) as caught:
        imagenet_seg_file(download=False)
    message = str(caught.value)
    assert manifest.url in message and str(cached_path(manifest)) in message
    assert "XAIKIT_IMAGENET_SEG=/path/to/gtsegs_ijcv.mat" in message

    # A failed download (".invalid" never resolves) says the same.
    folder = manifest_dir_with(tmp_path, "imagenet-seg", url="https://example.invalid/gtsegs_ijcv.mat")
    monkeypatch.setenv("XAIKIT_MANIFEST_DIR", str(folder))
    with pytest.raises(DataUnavailableError, match=r"Could not download https://example\.invalid.*XAIKIT_IMAGENET_SEG"):
        imagenet_seg_file()


def test_imagenet_seg_rejects_other_files_with_a_clear_error(tmp_path):
    not_hdf5 = tmp_path / "old.mat"
    not_hdf5.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(DataIntegrityError, match="not an HDF5 file"):
        ImageNetSegmentation(not_hdf5, verify=False)

    no_masks = tmp_path / "no_masks.mat"
    with h5py.File(no_masks, "w") as f:
        f.create_group("value").create_dataset("img", data=np.empty((1, 1), dtype=h5py.ref_dtype))
    with pytest.raises(DataIntegrityError, match=r"/value/gt is missing \(found: img\)"):
        ImageNetSegmentation(no_masks, verify=False)

    images, masks = seg_samples()
    masks[1] = masks[1] * 2  # 0/2 instead of 0/1
    data = ImageNetSegmentation(write_gtsegs(tmp_path / "bad.mat", images, masks), verify=False)
    np.testing.assert_array_equal(data.mask(0), masks[0])
    with pytest.raises(DataIntegrityError, match=r"/value/gt\[1, 0\] holds values other than 0 and 1"):
        data.mask(1)


def test_imagenet_seg_accepts_masks_stored_as_doubles(tmp_path):
    images, masks = seg_samples()
    data = ImageNetSegmentation(write_gtsegs(tmp_path / "double.mat", images, masks, mask_dtype=np.float64), verify=False)
    assert data.mask(2).dtype == np.uint8
    np.testing.assert_array_equal(data.mask(2), masks[2])


# ----------------------------------------------------------------------------- CIFAR-100

def tiny_cifar100_split(seed: int, records: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(records, 32, 32, 3), dtype=np.uint8)
    fine = np.repeat(np.arange(records // 2), 2)[:records].astype(np.int64)  # two images per fine class
    coarse = (fine // 5).astype(np.int64)
    return images, coarse, fine


def write_tiny_cifar100(path: Path, fine_names=FINE_NAMES) -> dict:
    parts = {"train": tiny_cifar100_split(0, 12), "test": tiny_cifar100_split(1, 8)}
    entries = [
        ("cifar-100-binary/fine_label_names.txt", ("\n".join(fine_names) + "\n\n").encode()),
        ("cifar-100-binary/coarse_label_names.txt", ("\n".join(COARSE_NAMES) + "\n").encode()),
    ]
    entries += [(f"cifar-100-binary/{split}.bin", cifar100_records(*parts[split])) for split in ("train", "test")]
    write_tar(path, entries)
    return parts


def test_read_cifar100_binary_returns_exact_pixels_fine_and_coarse_labels(tmp_path):
    archive = tmp_path / "cifar-100-binary.tar.gz"
    expected = write_tiny_cifar100(archive)

    for split in ("train", "test"):
        data = read_cifar100_binary(archive, split)
        images, coarse, fine = expected[split]
        assert isinstance(data, Cifar100Split)
        np.testing.assert_array_equal(data.images, images)
        np.testing.assert_array_equal(data.labels, fine)
        np.testing.assert_array_equal(data.coarse_labels, coarse)
        assert data.class_names == tuple(FINE_NAMES) and data.coarse_class_names == tuple(COARSE_NAMES)
    assert list((tmp_path / "cache" / "cifar100" / "extracted").iterdir())  # extracted into CIFAR-100's cache

    # Spot-check the layout against raw bytes of record 3: fine label byte and the blue value at (row 4, col 9).
    (folder,) = (tmp_path / "cache" / "cifar100" / "extracted").iterdir()
    raw = (folder / "cifar-100-binary" / "test.bin").read_bytes()[3 * 3074 : 4 * 3074]
    data = read_cifar100_binary(folder, "test")
    assert data.labels[3] == raw[1] and data.coarse_labels[3] == raw[0]
    assert data.images[3, 4, 9, 2] == raw[2 + 2048 + 4 * 32 + 9]


def test_cifar100_take_is_stratified_on_fine_labels_and_keeps_coarse_labels(tmp_path):
    archive = tmp_path / "cifar-100-binary.tar.gz"
    write_tiny_cifar100(archive)
    train = read_cifar100_binary(archive, "train")

    sample = train.take(6, seed=4)

    assert isinstance(sample, Cifar100Split) and len(sample) == 6
    assert sorted(sample.labels.tolist()) == list(range(6))  # one image of each of the 6 fine classes
    np.testing.assert_array_equal(sample.coarse_labels, sample.labels // 5)
    np.testing.assert_array_equal(sample.labels, train.take(6, seed=4).labels)


def test_read_cifar100_binary_rejects_broken_files(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    (folder / "fine_label_names.txt").write_text("\n".join(FINE_NAMES))
    (folder / "coarse_label_names.txt").write_text("\n".join(COARSE_NAMES))
    images, coarse, fine = tiny_cifar100_split(0, 2)
    (folder / "test.bin").write_bytes(cifar100_records(images, coarse, fine)[:-1])
    with pytest.raises(DataIntegrityError, match=r"6147 bytes, not a whole number of 3074-byte CIFAR-100 records"):
        read_cifar100_binary(folder, "test")

    bad_fine = fine.copy()
    bad_fine[1] = 100
    (folder / "test.bin").write_bytes(cifar100_records(images, coarse, bad_fine))
    with pytest.raises(DataIntegrityError, match=r"record 1 has label 100, outside 0\.\.99"):
        read_cifar100_binary(folder, "test")
    bad_coarse = coarse.copy()
    bad_coarse[0] = 20
    (folder / "test.bin").write_bytes(cifar100_records(images, bad_coarse, fine))
    with pytest.raises(DataIntegrityError, match=r"record 0 has label 20, outside 0\.\.19"):
        read_cifar100_binary(folder, "test")

    (folder / "test.bin").write_bytes(cifar100_records(images, coarse, fine))
    (folder / "fine_label_names.txt").write_text("\n".join(FINE_NAMES[:10]))  # CIFAR-10-like
    with pytest.raises(DataIntegrityError, match="lists 10 class names"):
        read_cifar100_binary(folder, "test")
    with pytest.raises(DataUnavailableError, match="train.bin"):
        read_cifar100_binary(folder, "train")
    with pytest.raises(InvalidParameterError, match="valid splits: train, test"):
        read_cifar100_binary(folder, "validation")


def test_load_cifar100_from_the_cache_checks_the_md5_without_network(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-100-binary.tar.gz"
    expected = write_tiny_cifar100(archive)
    folder = manifest_dir_with(tmp_path, "cifar100", size=archive.stat().st_size, md5=md5_of(archive))
    monkeypatch.setenv("XAIKIT_MANIFEST_DIR", str(folder))
    manifest = load_manifest("cifar100")

    with pytest.raises(DataUnavailableError) as caught:
        load_cifar100("test", download=False)
    assert manifest.url in str(caught.value) and str(cached_path(manifest)) in str(caught.value)

    shutil.copyfile(archive, cached_path(manifest))  # fetch made the folder
    data = load_cifar100("test", download=False)
    np.testing.assert_array_equal(data.images, expected["test"][0])
    assert json.loads(hash_record_path(manifest).read_text())["sha256"] == sha256_of(archive)

    examples = load_examples("cifar100", 4, seed=1)
    assert len(examples) == 4 and examples.class_names == tuple(FINE_NAMES)

    with open(cached_path(manifest), "ab") as handle:  # a corrupted cached copy is refused, not used
        handle.write(b"junk")
    with pytest.raises(DataUnavailableError, match="wrong md5"):
        load_cifar100("test", download=False)


# ----------------------------------------------------------------------------- ImageNet validation


def test_check_imagenet_val_accepts_the_full_label_file_with_a_subset_of_images(tmp_path):
    root = write_imagenet_folder(tmp_path / "val", [1, 2, 40, 7])
    folder = check_imagenet_val(root)
    assert folder.full and folder.files == tuple(f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 7, 40))
    assert folder.class_names[3] == "class 3" and len(folder.labels_by_file) == 50_000

    data = load_imagenet_val(root=root)
    assert data.files == list(folder.files) and data.labels == [7, 14, 49, 280]
    assert data.images[0].size == (8, 6) and data.real_labels is None


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda r: (r / "val.txt").write_text("".join((r / "val.txt").read_text().splitlines(True)[:-1])),
         r"lists 49999 files, not the 50000 .*missing \(first ILSVRC2012_val_00050000\.JPEG\)"),
        (lambda r: (r / "val.txt").write_text((r / "val.txt").read_text().replace(" 7\n", " 1000\n", 1)),
         r"line 1 gives ILSVRC2012_val_00000001\.JPEG the class index 1000, outside 0\.\.999"),
        (lambda r: (r / "val.txt").write_text((r / "val.txt").read_text().replace(" 14\n", "\n", 1)),
         r"line 2 is 'ILSVRC2012_val_00000002\.JPEG', not '<file> <class index>'"),
        (lambda r: Image.new("RGB", (4, 4)).save(r / "images" / "holiday.jpg"),
         r"1 image\(s\) in .* are not named in val\.txt \(first: holiday\.jpg\)"),
        (lambda r: (r / "synset_words.txt").write_text("n0 only\n"), r"names 1 classes, not the 1000"),
    ],
    ids=["short-val-txt", "label-out-of-range", "malformed-line", "unlabelled-image", "few-classes"],
)
def test_check_imagenet_val_names_what_is_wrong(tmp_path, damage, problem):
    root = write_imagenet_folder(tmp_path / "val", [1, 2])
    damage(root)
    with pytest.raises(DataIntegrityError, match=problem):
        check_imagenet_val(root)


def test_imagenet_val_with_real_labels_skips_images_without_any(tmp_path):
    real = load_real_labels()
    assert len(real) == 50_000 and real[0] == [] and len(real[1]) >= 2  # file 1 has no valid ReaL label
    root = write_imagenet_folder(tmp_path / "val", [1, 2, 3, 4])

    data = load_imagenet_val(root=root, labels="real")

    assert data.files == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (2, 3, 4)]
    assert data.real_labels == [tuple(real[i - 1]) for i in (2, 3, 4)]
    assert data.labels == [14, 21, 28]  # labels stay the original ones
    with pytest.raises(InvalidParameterError, match="labels must be one of 'original', 'real'"):
        load_imagenet_val(root=root, labels="multi")

    custom = tmp_path / "custom"
    (custom / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(custom / "images" / "cat.jpg")
    (custom / "val.txt").write_text("cat.jpg 3\n")
    (custom / "synset_words.txt").write_text("".join(f"n{i} c{i}\n" for i in range(1000)))
    assert load_imagenet_val(root=custom).labels == [3]  # not official names: no 50,000-line claim
    with pytest.raises(DataIntegrityError, match="official validation file names"):
        load_imagenet_val(root=custom, labels="real")


def test_sample_imagenet_val_is_seeded_and_in_file_order(tmp_path, monkeypatch):
    root = write_imagenet_folder(tmp_path / "val", list(range(1, 31)))
    monkeypatch.setenv("XAIKIT_IMAGENET_VAL", str(root))

    first = sample_imagenet_val(8, seed=5)

    assert first.files == sample_imagenet_val(8, seed=5).files == sorted(first.files)
    assert len(set(first.files)) == 8
    assert first.files != sample_imagenet_val(8, seed=6).files
    real_lists = load_real_labels()
    with_real_labels = [i for i in range(1, 31) if real_lists[i - 1]]
    assert 0 < len(with_real_labels) < 30
    real = sample_imagenet_val(len(with_real_labels), seed=0, labels="real")
    assert real.files == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in with_real_labels] and all(real.real_labels)
    with pytest.raises(InvalidParameterError, match="cannot sample 31 images: .* holds 30 eligible images"):
        sample_imagenet_val(31)
    with pytest.raises(InvalidParameterError, match="n to be a non-negative int"):
        sample_imagenet_val(-1)


@pytest.mark.skipif(not (SHARED_IMAGENET / "val.txt").is_file(), reason=f"no ImageNet sample at {SHARED_IMAGENET}")
def test_the_real_imagenet_sample_passes_the_checks():
    folder = check_imagenet_val(SHARED_IMAGENET)
    assert folder.full and len(folder.files) == 100 and len(folder.class_names) == 1000
    sample = sample_imagenet_val(5, seed=0, root=SHARED_IMAGENET, labels="real")
    assert len(sample) == 5 and all(sample.real_labels)
    # ReaL re-labels images, but mostly keeps the original label among the valid ones.
    full = load_imagenet_val(root=SHARED_IMAGENET, labels="real")
    agreement = np.mean([label in label_set for label, label_set in zip(full.labels, full.real_labels)])
    assert agreement > 0.7
