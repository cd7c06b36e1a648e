"""ClickMe without TensorFlow (issue 15 §3): TFRecord framing, tf.train.Example, shards, human maps, ViTA's subset.

Shards are written here in the real format; the byte layouts are checked against bytes that
TensorFlow itself wrote (test vectors quoted from TensorFlow's and DeepVariant's tests).
"""

from __future__ import annotations

import io
import json
import math
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xaikit.data import clickme
from xaikit.data.clickme import (
    ClickMeSample,
    blurred_object_maps,
    clickme_val_files,
    decode_example,
    encode_example,
    frame_record,
    harmonization_kernel,
    human_map,
    iter_clickme,
    load_clickme_val,
    masked_crc32c,
    read_payloads,
    read_records,
    select_vita_subset,
    write_records,
)
from xaikit.data.manifests import available_manifests, cached_path, hash_record_path, load_manifest
from xaikit.errors import DataIntegrityError, DataUnavailableError, InvalidParameterError

# A record TensorFlow's RecordWriter wrote (an Event proto of 24 bytes), from TensorFlow's
# tensorflow/python/summary/impl/event_file_loader_test.py.
TF_RECORD = (b'\x18\x00\x00\x00\x00\x00\x00\x00\xa3\x7fK"\t\x00\x00\xc0%\xddu'
             b'\xd5A\x1a\rbrain.Event:1\xec\xf32\x8d')
# A tf.train.Example serialised by TensorFlow's protobuf library, from DeepVariant's
# deepvariant/python/postprocess_variants_test (its expected_example).
TF_EXAMPLE = (b'\n\x84\x01\n\x17\n\x0bimage/shape\x12\x08\x1a\x06\n\x04d\xdd\x01\x07'
              b'\n\x0e\n\x05label\x12\x05\x1a\x03\n\x01\x02\n\x1f\n\x05locus\x12\x16'
              b'\n\x14\n\x12chr1:800045-800046\n\x1b\n\rimage/encoded\x12\n\n\x08\n'
              b'\x06d\xfe\xfeF\x982\n\x1b\n\x12alt_allele_indices\x12\x05\x1a\x03\n'
              b'\x01\x00')


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Own xaikit cache, own (empty) Keras home, no user configuration."""
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for name in ("XAIKIT_MANIFEST_DIR", "XAIKIT_CLICKME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(clickme, "_keras_cache_dirs", lambda: [tmp_path / "keras" / "datasets" / "click-me"])


def jpeg(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, **options)
    return buffer.getvalue()


def clickme_record(seed: int, label: int, image: bytes | None = None) -> dict:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    heatmap = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    return {"image": image if image is not None else jpeg(pixels), "heatmap": jpeg(heatmap), "label": label}


def write_shard(path: Path, count: int = 3, first_seed: int = 0) -> Path:
    return write_records(path, [clickme_record(first_seed + i, i % 1000) for i in range(count)])


# ----------------------------------------------------------------------------- framing


def test_masked_crc32c_is_the_castagnoli_crc_masked_by_tensorflows_formula():
    crc = 0xE3069283  # CRC32C of b"123456789", the standard check value
    assert masked_crc32c(b"123456789") == ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32)
    assert masked_crc32c(b"123456789") != ((((0xCBF43926 >> 15) | (0xCBF43926 << 17)) + 0xA282EAD8) % 2**32)  # zlib


def test_frame_record_writes_the_bytes_tensorflow_writes_and_read_payloads_reads_them(tmp_path):
    payload = TF_RECORD[12:-4]
    assert len(payload) == 24 and frame_record(payload) == TF_RECORD
    path = tmp_path / "events"
    path.write_bytes(TF_RECORD + frame_record(b"") + frame_record(b"second"))
    assert list(read_payloads(path)) == [payload, b"", b"second"]


def test_decode_example_reads_an_example_serialised_by_tensorflow():
    assert decode_example(TF_EXAMPLE) == {
        "image/shape": [100, 221, 7],  # packed int64
        "label": 2,
        "locus": b"chr1:800045-800046",
        "image/encoded": b"d\xfe\xfeF\x982",
        "alt_allele_indices": 0,
    }
    # The same entry, encoded alone, is byte for byte the bytes TensorFlow wrote for it.
    assert encode_example({"label": 2}) == b"\n\x10" + TF_EXAMPLE[28:44]


def test_decode_example_reads_unpacked_lists_negative_ints_floats_and_empty_features():
    def entry(name: bytes, feature: bytes) -> bytes:
        body = b"\n" + bytes([len(name)]) + name + b"\x12" + bytes([len(feature)]) + feature
        return b"\n" + bytes([len(body)]) + body

    unpacked_ints = b"\x1a\x0d\x08\x07\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # [7, -1], one varint each
    unpacked_floats = b"\x12\x0a\x0d" + struct.pack("<f", 0.5) + b"\x0d" + struct.pack("<f", -2.0)
    packed_float = b"\x12\x06\x0a\x04" + struct.pack("<f", 1.25)
    bytes_pair = b"\x0a\x07\x0a\x01a\x0a\x02bc"  # bytes_list [b"a", b"bc"]
    features = (entry(b"i", unpacked_ints) + entry(b"f", unpacked_floats) + entry(b"g", packed_float)
                + entry(b"b", bytes_pair) + entry(b"e", b""))
    example = b"\n" + bytes([len(features)]) + features
    assert decode_example(example) == {"i": [7, -1], "f": [0.5, -2.0], "g": [1.25], "b": [b"a", b"bc"], "e": []}


def test_write_records_and_read_records_round_trip(tmp_path):
    examples = [{"image": b"\x00\xff" * 300, "label": 999, "scores": [0.5, 1.0], "ids": [1, -2, 3]},
                {"image": b"", "label": -7, "names": [b"a", b"b"]}]
    path = write_records(tmp_path / "shard.tfrecords", examples)
    assert list(read_records(path)) == examples


def flipped(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x10]) + data[position + 1:]


@pytest.mark.parametrize("where_in_record", ["length", "length checksum", "data", "data checksum"])
def test_a_flipped_bit_names_the_file_and_the_record(tmp_path, where_in_record):
    path = write_shard(tmp_path / "val-0.tfrecords")
    raw = path.read_bytes()
    first_length = struct.unpack("<Q", raw[:8])[0] + 16
    second_length = struct.unpack("<Q", raw[first_length:first_length + 8])[0]
    offset = {"length": 0, "length checksum": 9, "data": 12 + second_length // 2, "data checksum": 13 + second_length}
    path.write_bytes(flipped(raw, first_length + offset[where_in_record]))
    with pytest.raises(DataIntegrityError, match=r"val-0\.tfrecords is damaged at record 1 .*fails? (its|their) CRC32C"):
        list(read_records(path))


@pytest.mark.parametrize("keep", ["header", "data", "checksum"])
def test_a_cut_file_names_the_file_and_the_record(tmp_path, keep):
    path = write_shard(tmp_path / "val-0.tfrecords")
    raw = path.read_bytes()
    ends, position = [], 0
    while position < len(raw):
        position += struct.unpack("<Q", raw[position:position + 8])[0] + 16
        ends.append(position)
    start_of_last = ends[1]
    cut = {"header": start_of_last + 5, "data": start_of_last + 40, "checksum": len(raw) - 2}[keep]
    path.write_bytes(raw[:cut])
    with pytest.raises(DataIntegrityError, match=r"val-0\.tfrecords is damaged at record 2 .*cut short.*download it"):
        list(read_records(path))


def test_data_that_are_no_example_are_reported_even_with_a_right_checksum(tmp_path):
    path = tmp_path / "val-0.tfrecords"
    path.write_bytes(frame_record(encode_example({"label": 1})) + frame_record(b"\x0a\x05ab"))  # length 5, 2 bytes
    with pytest.raises(DataIntegrityError, match=r"record 1 .*not a tf.train.Example .*runs past the end"):
        list(read_records(path))


def test_a_record_without_a_feature_names_the_feature_the_record_and_the_file(tmp_path):
    record = clickme_record(0, 5)
    del record["heatmap"]
    path = write_records(tmp_path / "val-4.tfrecords", [clickme_record(1, 3), record])
    with pytest.raises(DataIntegrityError, match=r"record 1 of .*val-4\.tfrecords has no 'heatmap' feature"):
        list(iter_clickme([path]))


def test_decode_clickme_gives_pixels_and_refuses_wrong_features(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    heatmap = np.full((8, 12), 200, np.uint8)
    sample = clickme.decode_clickme({"image": jpeg(pixels), "heatmap": jpeg(heatmap), "label": 7})
    assert isinstance(sample, ClickMeSample) and sample.label == 7
    assert sample.image.shape == (8, 12, 3) and sample.image.dtype == np.uint8
    assert np.array_equal(sample.heatmap, np.asarray(Image.open(io.BytesIO(jpeg(heatmap)))))
    with pytest.raises(DataIntegrityError, match=r"'label' feature is list .*not one int64"):
        clickme.decode_clickme({"image": jpeg(pixels), "heatmap": jpeg(heatmap), "label": [1, 2]})
    with pytest.raises(DataIntegrityError, match=r"'heatmap' is a RGB picture, not a single-channel"):
        clickme.decode_clickme({"image": jpeg(pixels), "heatmap": jpeg(pixels), "label": 1})
    with pytest.raises(DataIntegrityError, match=r"'image' \(10 bytes\) is not a readable JPEG"):
        clickme.decode_clickme({"image": b"\xff\xd8" + b"\x00" * 8, "heatmap": jpeg(heatmap), "label": 1})


# ----------------------------------------------------------------------------- the validation shards


def test_the_17_validation_manifests_name_the_harmonization_urls():
    names = [name for name in available_manifests() if name.startswith("clickme-")]
    assert sorted(names) == sorted(f"clickme-val-{i}" for i in range(17))
    for i in range(17):
        manifest = load_manifest(f"clickme-val-{i}")
        assert manifest.url == f"{clickme.CLICKME_BASE_URL}/val/val-{i}.tfrecords"
        assert manifest.sha256 is None and manifest.size is None and manifest.md5 is None


def test_a_keras_cache_copy_is_found_its_hash_recorded_and_a_changed_copy_refused(tmp_path):
    keras = tmp_path / "keras" / "datasets" / "click-me"
    keras.mkdir(parents=True)
    write_shard(keras / "clickme_val_2")
    with pytest.warns(UserWarning, match=r"shard\(s\) 2 could not be checked .*trust on first use"):
        files = clickme_val_files(shards=[2], downloader=refusing_downloader)
    assert files == [keras / "clickme_val_2"]
    record = json.loads(hash_record_path(load_manifest("clickme-val-2")).read_text())
    assert record["size"] == files[0].stat().st_size
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recorded: no second warning
        assert clickme_val_files(shards=[2], downloader=refusing_downloader) == files
    write_shard(keras / "clickme_val_2", first_seed=50)
    with pytest.raises(DataIntegrityError, match=r"clickme_val_2 .* is not the copy of val-2\.tfrecords first used"):
        clickme_val_files(shards=[2], downloader=refusing_downloader)


def refusing_downloader(url, output_file, pooch_instance):
    raise AssertionError(f"network access attempted for {url}")


def test_a_failed_download_says_where_to_put_the_shard(tmp_path):
    def offline(url, output_file, pooch_instance):
        raise OSError("Temporary failure in name resolution")

    with pytest.raises(DataUnavailableError, match=r"Could not download .*val/val-5\.tfrecords .*Temporary failure"
                                                   r".*place it at .*clickme-val-5.*XAIKIT_CLICKME"):
        clickme_val_files(shards=[5], downloader=offline)
    with pytest.raises(DataUnavailableError, match=r"shard 5 is not available locally and download=False.*"
                                                   r"XAIKIT_CLICKME.*\.keras/datasets/click-me"):
        clickme_val_files(shards=[5], download=False)


def test_a_download_is_recorded_and_used_offline_afterwards(tmp_path):
    source = write_shard(tmp_path / "served.tfrecords")
    calls = []

    def serve(url, output_file, pooch_instance):
        calls.append(url)
        shutil.copyfile(source, output_file)

    with pytest.warns(UserWarning, match="trust on first use"):
        files = clickme_val_files(shards=[0, 16], downloader=serve)
    manifest = load_manifest("clickme-val-16")
    assert files[1] == cached_path(manifest) and calls == [load_manifest("clickme-val-0").url, manifest.url]
    assert clickme_val_files(shards=[16], downloader=refusing_downloader) == [files[1]]


def test_a_folder_of_shards_and_its_errors(tmp_path, monkeypatch):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_shard(folder / "val-0.tfrecords", count=2)
    write_shard(folder / "clickme_val_1", count=3, first_seed=10)
    with pytest.warns(UserWarning, match=r"shard\(s\) 0, 1 could not be checked"):
        assert clickme_val_files(folder, shards=[0, 1]) == [folder / "val-0.tfrecords", folder / "clickme_val_1"]
    monkeypatch.setenv("XAIKIT_CLICKME", str(folder))
    with pytest.raises(DataUnavailableError, match=r"shard 2 is not in .*shards \(XAIKIT_CLICKME\): expected a file "
                                                   r"named val-2\.tfrecords or clickme_val_2"):
        clickme_val_files(shards=[1, 2])
    with pytest.raises(InvalidParameterError, match="distinct numbers from 0 to 16"):
        clickme_val_files(folder, shards=[0, 17])
    samples = list(load_clickme_val(shards=[0, 1]))
    assert [sample.label for sample in samples] == [0, 1, 0, 1, 2]
    chosen = list(load_clickme_val(shards=[0, 1], indices=[4, 1]))
    assert [sample.label for sample in chosen] == [1, 2]
    assert np.array_equal(chosen[1].image, samples[4].image)
    with pytest.raises(InvalidParameterError, match=r"index 5, but the chosen shards hold only 5 records"):
        list(load_clickme_val(shards=[0, 1], indices=[0, 5]))


# ----------------------------------------------------------------------------- human maps


def test_harmonization_kernel_is_its_gaussian_kernel():
    kernel = harmonization_kernel()
    assert kernel.shape == (10, 10) and math.isclose(kernel.sum(), 1.0)
    # Row r has y = 4 - r, column c has x = c - 5: the peak is at (4, 5) and the corner (9, 0) is x = -5, y = -5.
    peak = kernel[4, 5]
    assert kernel[0, 0] == pytest.approx(peak * math.exp(-(25 + 16) / 200))
    assert kernel[9, 0] == pytest.approx(peak * math.exp(-(25 + 25) / 200))
    assert kernel[9, 0] == kernel.min() and kernel[4, 5] == kernel.max()
    assert kernel.min() == pytest.approx(0.0085, abs=5e-5) and kernel.max() == pytest.approx(0.0109, abs=5e-5)


def test_human_map_by_hand_on_a_small_map():
    """4x4 -> 2x2 grid, a 2x2 kernel of sigma 1, 'SAME' padding 0 before and 1 after, -> 4x4."""
    heatmap = np.array([[0, 4, 8, 8], [4, 8, 8, 8], [0, 0, 16, 0], [0, 0, 0, 16]], float)
    grid = np.array([[4.0, 8.0], [0.0, 8.0]])  # half-pixel bilinear halving = 2x2 block means
    a, b = math.exp(-0.5), math.exp(-1.0)
    z = 1 + 2 * a + b
    # kernel rows y = 0, -1 and columns x = -1, 0: [[e^-.5, 1], [e^-1, e^-.5]] / z
    blurred = np.array([
        [(4 * a + 8 * 1 + 0 * b + 8 * a) / z, (8 * a + 8 * b) / z],  # right and bottom neighbours are padding
        [(0 * a + 8 * 1) / z, (8 * a) / z],
    ])
    assert np.allclose(human_map(heatmap, 2, grid=2, kernel_size=2, sigma=1.0), blurred, atol=1e-6)

    # Upsampling 2 -> 4 with half-pixel centres reads the grid at -0.25, 0.25, 0.75, 1.25 (clamped).
    weights = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    expected = weights @ blurred @ weights.T
    assert np.allclose(human_map(heatmap, 4, grid=2, kernel_size=2, sigma=1.0), expected, atol=1e-6)
    assert not np.allclose(grid, blurred)


def test_human_map_pads_four_before_and_five_after_as_tensorflow_same():
    kernel = harmonization_kernel()
    flat = human_map(np.full((256, 256), 100.0))
    assert flat.shape == (224, 224) and flat.dtype == np.float32
    assert flat[112, 112] == pytest.approx(100.0)  # the kernel sums to 1
    assert flat[0, 0] == pytest.approx(100 * kernel[4:, 4:].sum(), rel=1e-6)  # 4 rows/columns of padding above/left
    assert flat[223, 223] == pytest.approx(100 * kernel[:5, :5].sum(), rel=1e-6)  # 5 below/right
    # A single hot grid pixel (a 4x4 block at 256) spreads as the mirrored kernel: out[i, j] = K[i0 - i + 4, j0 - j + 4].
    grid = human_map(np.kron(np.eye(64)[20:21].T @ np.eye(64)[30:31], np.ones((4, 4))), 64)
    assert np.allclose(grid[15:25, 25:35], kernel[::-1, ::-1], atol=1e-7)
    grid[15:25, 25:35] = 0
    assert np.allclose(grid, 0, atol=1e-7)


def test_human_map_takes_batches_tensors_and_a_channel_axis_and_refuses_bad_maps():
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 255, (2, 256, 256))
    batch = human_map(torch.as_tensor(maps))
    assert batch.shape == (2, 224, 224)
    assert np.allclose(batch[1], human_map(maps[1][..., None]))
    with pytest.raises(InvalidParameterError, match=r"one map \(H, W\) or a batch"):
        human_map(np.zeros((2, 3, 4, 5)))
    with pytest.raises(InvalidParameterError, match="NaN or infinite"):
        human_map(np.full((4, 4), np.nan))


def test_blurred_object_maps_are_the_clickme_preprocessing_at_the_image_size():
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 8:20, 4:12] = True
    masks[1] = True
    maps = blurred_object_maps(masks)
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    # By the steps: each pixel an 8x8 block of a 256x256 heatmap at 255, Harmonization's map, 7x7 block means.
    clickme_map = human_map(np.kron(masks[0].astype(float), np.ones((8, 8))) * 255)
    assert np.allclose(maps[0], clickme_map.reshape(32, 7, 32, 7).mean(axis=(1, 3)), atol=1e-3)
    # Borders darken, the lower right most (5 rows/columns of padding there, 4 above/left).
    assert maps[1, 16, 16] == pytest.approx(255.0) and maps[1, 31, 31] < maps[1, 0, 0] < 255
    assert np.allclose(blurred_object_maps(masks[0]), maps[0])
    with pytest.raises(InvalidParameterError, match="must be square"):
        blurred_object_maps(np.zeros((32, 16), bool))


# ----------------------------------------------------------------------------- ViTA's subset


def fabricated_records() -> tuple[list[dict], dict]:
    """Class 0: 5 distinct images + 2 duplicates; class 1: 2 images (one given 3 times); class 2: 1 image."""
    rng = np.random.default_rng(7)
    pictures = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(8)]
    near = pictures[0].copy()
    near[0, 0, 0] ^= 0xFF  # one pixel differs: another image
    records = [clickme_record(i, 0, jpeg(p)) for i, p in enumerate(pictures[:4])]  # 0..3
    records.append(clickme_record(10, 0, jpeg(pictures[0])))  # 4: same bytes, another map
    records.append(clickme_record(11, 0, jpeg(pictures[1], optimize=True)))  # 5: other bytes, same pixels
    records.append(clickme_record(12, 0, jpeg(near)))  # 6: distinct
    records += [clickme_record(20, 1, jpeg(pictures[5])), clickme_record(21, 1, jpeg(pictures[5])),  # 7, 8
                clickme_record(22, 1, jpeg(pictures[6])), clickme_record(23, 1, jpeg(pictures[5])),  # 9, 10
                clickme_record(30, 2, jpeg(pictures[7]))]  # 11
    assert records[5]["image"] != records[1]["image"]
    distinct = {0: [0, 1, 2, 3, 6], 1: [7, 9], 2: [11]}
    return records, distinct


def test_select_vita_subset_keeps_distinct_images_and_draws_up_to_three_per_class(tmp_path):
    records, distinct = fabricated_records()
    paths = [write_records(tmp_path / "val-0.tfrecords", records[:6]),
             write_records(tmp_path / "val-1.tfrecords", records[6:])]
    subset = select_vita_subset(record for path in paths for record in read_records(path))
    assert subset.records == 12 and subset.duplicates == 4
    assert len(subset) == 3 + 2 + 1 and subset.images_per_class() == {3: 1, 2: 1, 1: 1}
    chosen = set(subset.indices.tolist())
    assert chosen >= {7, 9, 11} and len(chosen & set(distinct[0])) == 3 and chosen <= {i for v in distinct.values()
                                                                                      for i in v}
    assert subset.labels.tolist() == [0, 0, 0, 1, 1, 2]
    # Decoded samples give the same selection; the seed is reproducible and matters.
    samples = list(iter_clickme(paths))
    assert np.array_equal(select_vita_subset(samples).indices, subset.indices)
    draws = {tuple(select_vita_subset(records, seed=seed).indices.tolist()) for seed in range(6)}
    assert len(draws) > 1 and tuple(subset.indices.tolist()) in draws
    assert np.array_equal(select_vita_subset(records, per_class=1, seed=3).labels, [0, 1, 2])


def test_select_vita_subset_refuses_what_is_not_a_clickme_sample():
    with pytest.raises(InvalidParameterError, match=r"item 0 given to select_vita_subset is a str"):
        select_vita_subset(["not a record"])
    with pytest.raises(DataIntegrityError, match=r"item 0 given to select_vita_subset has no 'label' feature"):
        select_vita_subset([{"image": b"", "heatmap": b""}])
    with pytest.raises(InvalidParameterError, match="per_class >= 1"):
        select_vita_subset([], per_class=0)
