"""xaikit.data.lidc: the LIDC-IDRI cohort from pylidc's real annotation database, pylidc on numpy 2, and crops.

The cohort tests share one full build of the cluster table (module-scoped fixture, into a temporary
cache): all 1018 scans, about 45 s of CPU. The crop tests use small synthetic volumes (no DICOMs here).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import zoom

from xaikit.data import lidc
from xaikit.errors import DataUnavailableError, InvalidParameterError, XaikitError

# numpy < 1.24 still has np.int etc. (deprecated); numpy 2 has np.bool again. What matters: xaikit adds none.
NUMPY_ALIASES = ("int", "float", "bool")
NUMPY_ALIASES_BEFORE = {alias: hasattr(np, alias) for alias in NUMPY_ALIASES}

needs_pylidc = pytest.mark.skipif(importlib.util.find_spec("pylidc") is None, reason="pylidc is not installed")

BIOMARKER_RANGES = {  # LIDC rating scales; diameter in mm
    "subtlety": (1, 5),
    "calcification": (1, 6),
    "margin": (1, 5),
    "lobulation": (1, 5),
    "spiculation": (1, 5),
    "texture": (1, 5),
    "sphericity": (1, 5),
    "malignancy_median": (1, 5),
    "diameter": (0.5, 100.0),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """select_cohort() built from scratch into a fresh cache; (cohort, wall seconds, cache folder)."""
    if importlib.util.find_spec("pylidc") is None:
        pytest.skip("pylidc is not installed")
    cache = tmp_path_factory.mktemp("xaikit-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XAIKIT_CACHE_DIR", str(cache))
        started = time.perf_counter()
        cohort = lidc.select_cohort()
        seconds = time.perf_counter() - started
    print(f"\nLIDC cluster table built in {seconds:.1f} s")
    return cohort, seconds, cache


@pytest.fixture
def cached(built, monkeypatch):
    """The built cache is active and any rebuild fails the test."""
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(built[2]))

    def no_rebuild(tol):
        raise AssertionError("the cluster table was rebuilt although it is cached")

    monkeypatch.setattr(lidc, "_build_cluster_table", no_rebuild)
    return built[0]


# ----------------------------------------------------------------------------------------------
# cohort on the real database
# ----------------------------------------------------------------------------------------------


@needs_pylidc
def test_cohort_counts_columns_and_labels(built):
    cohort, seconds, _ = built
    assert tuple(cohort.columns) == lidc.COHORT_COLUMNS
    # pylidc 0.2.3, default tolerance; the paper's 443/411 is explained in xaikit.data.lidc's docstring.
    counts = cohort["label"].value_counts().to_dict()
    assert counts == {"benign": 448, "malignant": 421}
    assert (cohort.attrs["n_benign"], cohort.attrs["n_malignant"]) == (448, 421)
    assert cohort.attrs["n_excluded_median_3"] == 509
    assert cohort.attrs["build_seconds"] > 0
    assert cohort["n_annotations"].between(3, 4).all()
    median = cohort["malignancy_median"]
    assert (cohort["label"] == np.where(median > 3, "malignant", "benign")).all()
    assert not (median == 3).any()
    assert set(np.unique(median * 2) % 1) == {0.0}  # medians of integer ratings: whole or half
    assert cohort["scan_id"].str.fullmatch(r"LIDC-IDRI-\d{4}").all()
    assert not cohort.duplicated(["scan_index", "nodule"]).any()
    assert cohort["scan_index"].between(1, 1018).all()
    for name, (low, high) in BIOMARKER_RANGES.items():
        values = cohort[name]
        assert values.dtype == np.float64 and np.isfinite(values).all(), name
        assert values.between(low, high).all(), (name, values.min(), values.max())
    # Malignant nodules are larger and more spiculated on average: a sanity check of the columns' meaning.
    by_label = cohort.groupby("label")[["diameter", "spiculation"]].mean()
    assert (by_label.loc["malignant"] > by_label.loc["benign"]).all()


@needs_pylidc
def test_no_numpy_alias_or_stand_in_left_behind(built):
    assert {alias: hasattr(np, alias) for alias in NUMPY_ALIASES} == NUMPY_ALIASES_BEFORE
    for name in ("pylidc.Scan", "pylidc.Annotation", "pylidc.Contour", "pylidc.utils"):
        assert sys.modules[name].np is np, name
    assert sys.modules["pylidc.Scan"]._get_dicom_file_path_from_config_file is not lidc._pylidc_dicom_root_reader
    stand_in = sys.modules.get("pkg_resources")
    assert stand_in is None or getattr(stand_in, "__file__", None) is not None  # never xaikit's stand-in
    with lidc.pylidc_compat() as pl:
        # Not even during the scope: only pylidc's modules see the aliases.
        assert {alias: hasattr(np, alias) for alias in NUMPY_ALIASES} == NUMPY_ALIASES_BEFORE
        assert sys.modules["pylidc.Contour"].np.int is (np.int if NUMPY_ALIASES_BEFORE["int"] else int)
        assert sys.modules["pylidc.Annotation"].np.bool is (np.bool if hasattr(np, "bool") else bool)
        assert sys.modules["pylidc.Annotation"].np.ndarray is np.ndarray
        with lidc.pylidc_compat():  # nesting keeps the outer scope's patches
            pass
        assert sys.modules["pylidc.Contour"].np is not np
        assert pl.query(pl.Scan).count() == 1018
    assert sys.modules["pylidc.Contour"].np is np


@needs_pylidc
def test_clusters_and_means_match_plain_pylidc(cached):
    """The memoised metric clusters as pylidc's own metric="min"; the means are the annotators' means."""
    table = lidc.cluster_table()
    # LIDC-IDRI-0001, a patient's first of two scans, scans whose groups needed pylidc's tolerance reduction
    # (clusters of > 4 annotations), and the scan with the most annotations.
    scan_indices = [12, 7, 66, 342, 408, 969]
    with lidc.pylidc_compat() as pl:
        for scan_index in scan_indices:
            scan = pl.query(pl.Scan).filter(pl.Scan.id == scan_index).one()
            clusters = scan.cluster_annotations(verbose=False)
            rows = table[table["scan_index"] == scan_index].sort_values("nodule")
            assert rows["n_annotations"].tolist() == [len(cluster) for cluster in clusters], scan_index
            assert (rows["scan_id"] == scan.patient_id).all()
            for row, cluster in zip(rows.itertuples(), clusters):
                assert row.diameter == pytest.approx(np.mean([annotation.diameter for annotation in cluster]))
                assert row.spiculation == pytest.approx(np.mean([annotation.spiculation for annotation in cluster]))
                assert row.calcification == pytest.approx(np.mean([a.calcification for a in cluster]))
                assert row.malignancy_median == np.median([annotation.malignancy for annotation in cluster])
    assert table.loc[table["scan_index"] == 136, "first_scan_of_patient"].all() == False  # noqa: E712
    assert table.loc[table["scan_index"] == 7, "first_scan_of_patient"].all()


@needs_pylidc
def test_cache_is_reused_for_other_selections(cached, built):
    again = lidc.select_cohort()
    pd.testing.assert_frame_equal(again, cached)
    assert "build_seconds" not in again.attrs
    assert "pylidc" + importlib.metadata.version("pylidc") in again.attrs["cache_path"]
    three = lidc.select_cohort(3, 3)
    assert (three["n_annotations"] == 3).all()
    assert len(three) == (cached["n_annotations"] == 3).sum()
    # The reference notebook's one scan per patient: 8 patients have two scans.
    per_patient = lidc.select_cohort(one_scan_per_patient=True)
    assert per_patient["label"].value_counts().to_dict() == {"benign": 447, "malignant": 415}
    assert set(per_patient["scan_index"]) <= set(cached["scan_index"])
    assert not {136, 153, 316, 369, 490} & set(per_patient["scan_index"])


@needs_pylidc
def test_cache_keyed_by_tolerance_and_rebuilt_when_broken(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path))
    calls = []
    fake = pd.DataFrame(
        [["LIDC-IDRI-0001", 12, 0, 4, True, 5.0, 6.0, 3.0, 3.0, 4.0, 30.0, 5.0, 4.0, 5.0],
         ["LIDC-IDRI-0002", 13, 0, 3, True, 2.0, 6.0, 4.0, 1.0, 1.0, 8.0, 5.0, 4.0, 2.0],
         ["LIDC-IDRI-0003", 14, 1, 4, True, 2.0, 6.0, 4.0, 1.0, 1.0, 8.0, 5.0, 4.0, 3.0]],
        columns=list(lidc._TABLE_COLUMNS),
    )

    def fake_build(tol):
        calls.append(tol)
        return fake.copy()

    monkeypatch.setattr(lidc, "_build_cluster_table", fake_build)
    cohort = lidc.select_cohort(tol=1.5)
    assert calls == [1.5] and cohort["label"].tolist() == ["malignant", "benign"]
    assert cohort.attrs["n_excluded_median_3"] == 1
    path = tmp_path / "lidc" / f"clusters-v1-pylidc{importlib.metadata.version('pylidc')}-tol1.5mm.csv"
    assert path.is_file() and cohort.attrs["cache_path"] == str(path)
    lidc.select_cohort(tol=1.5)
    assert calls == [1.5]  # read back from the cache
    lidc.select_cohort(tol=2.0)
    assert calls == [1.5, 2.0]  # another tolerance, another file
    path.write_text("scan_id,oops\nx,1\n")
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = lidc.select_cohort(tol=1.5)
    assert calls == [1.5, 2.0, 1.5]
    pd.testing.assert_frame_equal(rebuilt, cohort)
    lidc.select_cohort(tol=1.5, refresh=True)
    assert calls == [1.5, 2.0, 1.5, 1.5]


def test_cohort_rejects_bad_parameters():
    for kwargs in ({"min_annotations": 0}, {"min_annotations": 5, "max_annotations": 4}, {"max_annotations": 3.5},
                   {"tol": -1.0}, {"tol": float("nan")}, {"tol": True}, {"one_scan_per_patient": "yes"}):
        with pytest.raises(InvalidParameterError):
            lidc.select_cohort(**kwargs)


def test_missing_pylidc_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "pylidc", None)  # what importing an absent package looks like
    with pytest.raises(XaikitError, match="pip install pylidc"):
        lidc.select_cohort()
    with pytest.raises(XaikitError, match="pip install pylidc"):
        with lidc.pylidc_compat():
            pass


# ----------------------------------------------------------------------------------------------
# crops on synthetic volumes
# ----------------------------------------------------------------------------------------------

SPACING = (0.7, 0.7, 2.5)


def sphere_volume(shape=(81, 81, 25), centre_mm=(28.0, 26.0, 30.0), radius_mm=6.0, inside=100.0, outside=-800.0):
    """A +100 HU ball in a -800 HU background on the anisotropic LIDC-like grid SPACING."""
    axes = [np.arange(n) * s for n, s in zip(shape, SPACING)]
    i, j, k = np.meshgrid(*axes, indexing="ij")
    distance = np.sqrt((i - centre_mm[0]) ** 2 + (j - centre_mm[1]) ** 2 + (k - centre_mm[2]) ** 2)
    return np.where(distance <= radius_mm, inside, outside).astype(np.int16)


def test_crop_centres_the_sphere_at_1mm():
    centre_mm = np.array([28.0, 26.0, 30.0])
    volume = sphere_volume(centre_mm=centre_mm)
    cube = lidc.extract_crop(volume, SPACING, centre_mm / SPACING)
    assert cube.shape == (32, 32, 32) and cube.dtype == np.float32
    assert cube[16, 16, 16] == pytest.approx(100.0)
    weights = cube + 800.0
    centroid = [(weights.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(32)).sum() / weights.sum()
                for axis in range(3)]
    np.testing.assert_allclose(centroid, 16.0, atol=0.3)
    # 1 mm isotropic: the ball's extent along each axis is ~2 * 6 mm = 12-13 voxels, whatever the input spacing.
    for axis in range(3):
        profile = np.moveaxis(cube, axis, 0)[:, 16, 16]
        assert 11 <= (profile > -350).sum() <= 13, axis
    # The same as zoom-ing the whole volume to 1 mm (linear) and cutting: zoom factors chosen so its
    # corner-aligned grid is exactly 1 mm ((n - 1) * spacing + 1 voxels).
    factors = [((n - 1) * s + 1) / n for n, s in zip(volume.shape, SPACING)]
    resampled = zoom(volume.astype(np.float64), factors, order=1)
    assert resampled.shape == (57, 57, 61)
    origin = (centre_mm - 16).astype(int)
    expected = resampled[origin[0]:origin[0] + 32, origin[1]:origin[1] + 32, origin[2]:origin[2] + 32]
    np.testing.assert_allclose(cube, expected, atol=1e-3)
    np.testing.assert_array_equal(lidc.extract_crop(volume, SPACING, centre_mm, centre_units="mm"), cube)


def test_crop_clamps_hu_and_pads_outside_the_scan():
    volume = sphere_volume(inside=1500.0, outside=-1200.0)  # bone-bright ball in below-air background
    cube = lidc.extract_crop(volume, SPACING, np.array([28.0, 26.0, 30.0]) / SPACING)
    assert cube.max() == 400.0 and cube.min() == -1000.0
    assert (cube == 400.0).sum() > 500 and (cube == -1000.0).sum() > 10_000

    background = np.full((60, 60, 20), -800, np.int16)
    # Centre 2 voxels (1.4 mm) from the first row and on the last slice: the cube keeps its size and is
    # -1000 HU exactly where it leaves the scan.
    cube = lidc.extract_crop(background, SPACING, (2.0, 30.0, 19.0))
    assert cube.shape == (32, 32, 32)
    rows_outside = (np.arange(32) - 16) + 2 * 0.7 < 0  # row position in mm from the first voxel centre
    slices_outside = (np.arange(32) - 16) / 2.5 + 19 > 19
    assert (cube[rows_outside] == -1000.0).all() and (cube[:, :, slices_outside] == -1000.0).all()
    assert (cube[~rows_outside][:, :, ~slices_outside] == -800.0).all()
    assert lidc.extract_crop(background, SPACING, (30, 30, 10), size_mm=20).shape == (20, 20, 20)
    assert lidc.extract_crop(background, SPACING, (30, 30, 10), fill_hu=-500.0, size_mm=8)[0, 0, 0] == -800.0


def test_slices_views_scaling_and_random_jitter():
    rng = np.random.default_rng(0)
    cube = rng.uniform(-1400, 800, size=(32, 32, 32)).astype(np.float32)
    views = lidc.slices(cube)
    assert views.shape == (3, 32, 32) and views.dtype == np.float32
    assert views.min() == 0.0 and views.max() == 1.0
    scaled = (np.clip(cube, -1000, 400) + 1000) / 1400
    np.testing.assert_allclose(views[0], scaled[:, :, 16], rtol=1e-6)  # axial: fixed slice
    np.testing.assert_allclose(views[1], scaled[16, :, :], rtol=1e-6)  # coronal: fixed row
    np.testing.assert_allclose(views[2], scaled[:, 16, :], rtol=1e-6)  # sagittal: fixed column
    assert lidc.VIEWS == ("axial", "coronal", "sagittal")

    # Random mode: find which index each view was cut at; always 14..18, reproducible, all five used.
    seen = set()
    for seed in range(40):
        drawn = lidc.slices(cube, "random", seed)
        np.testing.assert_array_equal(drawn, lidc.slices(cube, "random", np.random.default_rng(seed)))
        for view, take in enumerate((lambda s: scaled[:, :, s], lambda s: scaled[s], lambda s: scaled[:, s, :])):
            index = [s for s in range(32) if np.allclose(drawn[view], take(s), rtol=1e-6)]
            assert len(index) == 1 and 14 <= index[0] <= 18
            seen.add(index[0])
    assert seen == {14, 15, 16, 17, 18}


def test_crop_and_slices_reject_bad_input():
    volume = np.zeros((10, 10, 10), np.int16)
    bad_crops = [
        dict(volume_hu=np.zeros((10, 10)), spacing_mm=SPACING, centre=(5, 5, 5)),
        dict(volume_hu=volume, spacing_mm=(0.7, 0.0, 2.5), centre=(5, 5, 5)),
        dict(volume_hu=volume, spacing_mm=(0.7, 0.7), centre=(5, 5, 5)),
        dict(volume_hu=volume, spacing_mm=SPACING, centre=(5, 5, np.nan)),
        dict(volume_hu=volume, spacing_mm=SPACING, centre=(5, 5, 5), size_mm=0),
        dict(volume_hu=volume, spacing_mm=SPACING, centre=(5, 5, 5), centre_units="cm"),
        dict(volume_hu=volume, spacing_mm=SPACING, centre=(5, 5, 5), hu_range=(400, -1000)),
    ]
    for kwargs in bad_crops:
        with pytest.raises(InvalidParameterError):
            lidc.extract_crop(**kwargs)
    cube = np.zeros((32, 32, 32), np.float32)
    with pytest.raises(InvalidParameterError, match="rng"):
        lidc.slices(cube, "random")
    with pytest.raises(InvalidParameterError, match="mode"):
        lidc.slices(cube, "center")
    with pytest.raises(InvalidParameterError, match="cube"):
        lidc.slices(np.zeros((32, 32, 30)))


# ----------------------------------------------------------------------------------------------
# load_scan_crops: pylidc wiring (no DICOMs here)
# ----------------------------------------------------------------------------------------------


@needs_pylidc
def test_load_scan_crops_without_dicoms_says_how_to_configure(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataUnavailableError, match=r"no DICOM folder configured.*\.pylidcrc"):
        lidc.load_scan_crops("LIDC-IDRI-0001")
    assert not (tmp_path / ".pylidcrc").exists()  # pylidc's own reader would have written a template here
    (tmp_path / ".pylidcrc").write_text(f"[dicom]\npath = {tmp_path / 'missing'}\n")
    with pytest.raises(DataUnavailableError, match="does not exist"):
        lidc.load_scan_crops(12)
    (tmp_path / "LIDC-IDRI").mkdir()
    (tmp_path / ".pylidcrc").write_text(f"[dicom]\npath = {tmp_path / 'LIDC-IDRI'}\n")
    with pytest.raises(DataUnavailableError, match="cannot read the DICOM files of LIDC-IDRI-0001"):
        lidc.load_scan_crops(12)
    with pytest.raises(InvalidParameterError, match="LIDC-IDRI-9999"):
        lidc.load_scan_crops("LIDC-IDRI-9999")
    with pytest.raises(InvalidParameterError, match="nodules"):
        lidc.load_scan_crops(12, nodules=[5])
    with pytest.raises(InvalidParameterError, match="scan must be"):
        lidc.load_scan_crops(12.0)


@needs_pylidc
def test_load_scan_crops_centres_on_the_consensus_box(tmp_path, monkeypatch):
    """A fake to_volume with a bright block around the expected centre: the crop must centre on it."""
    (tmp_path / "LIDC-IDRI").mkdir()
    (tmp_path / ".pylidcrc").write_text(f"[dicom]\npath = {tmp_path / 'LIDC-IDRI'}\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    with lidc.pylidc_compat() as pl:
        scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0001").order_by(pl.Scan.id).first()
        clusters = scan.cluster_annotations(verbose=False)
        points = np.vstack([annotation.contours_matrix for annotation in clusters[0]])
        n_slices = len(scan.slice_zvals)
        spacing = np.asarray(scan.spacings, dtype=float)
    centre = (points.min(axis=0) + points.max(axis=0)) / 2  # union bounding box of the annotators' contours
    volume = np.full((512, 512, n_slices), -800, np.int16)
    low = np.ceil(centre - [4, 4, 1]).astype(int)
    high = np.floor(centre + [4, 4, 1]).astype(int) + 1
    volume[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = 100  # symmetric about the centre
    monkeypatch.setattr(scan, "to_volume", lambda verbose=True: volume)

    crops = lidc.load_scan_crops(scan)
    assert list(crops) == [0]  # LIDC-IDRI-0001 has one nodule, with 4 annotations
    cube = crops[0]
    assert cube.shape == (32, 32, 32) and cube[16, 16, 16] == 100.0
    weights = cube + 800.0
    centroid = [(weights.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(32)).sum() / weights.sum()
                for axis in range(3)]
    np.testing.assert_allclose(centroid, 16.0, atol=1e-3)
    assert spacing[2] == 2.5

    monkeypatch.setattr(scan, "to_volume", lambda verbose=True: volume[:, :, :-1])
    with pytest.raises(XaikitError, match="slices"):
        lidc.load_scan_crops(scan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lidc.load_scan_crops(scan, nodules=[]) == {}


def test_cohort_crops_file_round_trip_and_refusals(tmp_path, monkeypatch):
    from xaikit.errors import DataIntegrityError, DataUnavailableError

    cohort = pd.DataFrame({"scan_id": ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0002"], "scan_index": [1, 2, 2],
                           "nodule": [0, 1, 3], "label": ["malignant", "benign", "benign"]})
    calls = []

    def fake_crops(scan_index, *, nodules, size_mm):  # the DICOM reader, which needs the TCIA files
        calls.append((scan_index, tuple(nodules)))
        return {n: np.full((size_mm,) * 3, 100.0 * scan_index + n + 0.4, np.float32) for n in nodules}

    monkeypatch.setattr(lidc, "load_scan_crops", fake_crops)
    path = lidc.write_cohort_crops(tmp_path / "crops.npz", cohort)
    assert calls == [(1, (0,)), (2, (1, 3))]  # one DICOM read per scan
    cubes, rows = lidc.read_cohort_crops(path, cohort.iloc[::-1])
    assert cubes.shape == (3, 32, 32, 32) and cubes.dtype == np.float32
    assert cubes[:, 0, 0, 0].tolist() == [100.0, 201.0, 203.0]  # HU rounded to int16 in the file
    assert rows[["scan_index", "nodule"]].values.tolist() == [[1, 0], [2, 1], [2, 3]]
    with pytest.raises(DataIntegrityError, match="belong to no nodule"):
        lidc.read_cohort_crops(path, cohort.iloc[:2])
    with pytest.raises(DataUnavailableError, match="write_cohort_crops"):
        lidc.read_cohort_crops(tmp_path / "missing.npz", cohort)
    np.savez(tmp_path / "other.npz", images=np.zeros(3))
    with pytest.raises(DataIntegrityError, match="not a crops file"):
        lidc.read_cohort_crops(tmp_path / "other.npz", cohort)
