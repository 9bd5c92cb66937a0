"""Data sources for accuracy: digits, image folders, npz files and DataLoaders, real files in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cogent_compiler.accuracy import Dataset, from_loader, load_data
from cogent_compiler.errors import CogentError, DataError

DIGITS_N = 1797


def raises_one_line(match: str):
    """pytest.raises(DataError, match=...) that also insists the message is a single line."""

    class _Ctx:
        def __enter__(self):
            self._cm = pytest.raises(DataError, match=match)
            self.info = self._cm.__enter__()
            return self.info

        def __exit__(self, *exc):
            out = self._cm.__exit__(*exc)
            assert "\n" not in str(self.info.value), str(self.info.value)
            return out

    return _Ctx()


def _all_in_order(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Train then val, i.e. the samples in the shuffled order the split used."""
    return np.concatenate([ds.x_train, ds.x_val]), np.concatenate([ds.y_train, ds.y_val])


def _save_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def _image_folder(root: Path, classes: dict[str, tuple[int, int, int]], per_class: int = 3) -> Path:
    """root/<class>/img<i>.png filled with the class's RGB colour, in assorted sizes."""
    from PIL import Image

    for cls, colour in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            size = (10 + 3 * i, 7 + 2 * i)
            ext = ".png" if i % 2 == 0 else ".jpg"
            Image.new("RGB", size, colour).save(root / cls / f"img{i}{ext}")
    return root


# -- digits ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits16() -> Dataset:
    return load_data("digits", (1, 1, 16, 16), 10)


def test_digits_float32_16x16(digits16: Dataset):
    ds = digits16
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.x_train.shape == (1348, 1, 16, 16) and ds.x_val.shape == (449, 1, 16, 16)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    x, y = _all_in_order(ds)
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    assert ds.to_json() == {
        "name": "digits", "train_size": 1348, "val_size": 449, "num_classes": 10,
        "input_shape": [1, 16, 16], "dtype": "float32",
    }


def test_digits_uint8_rgb_32x32():
    ds = load_data("digits", (1, 3, 32, 32), 10, input_dtype="uint8")
    assert ds.x_train.shape == (1348, 3, 32, 32) and ds.x_val.shape == (449, 3, 32, 32)
    assert ds.x_train.dtype == np.uint8
    x, _ = _all_in_order(ds)
    assert x.min() == 0 and x.max() == 255
    # digits are grayscale: the three channels are copies
    assert np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2])


def test_digits_float_rgb_matches_uint8_scaling():
    f = load_data("digits", (1, 3, 32, 32), 10)
    u = load_data("digits", (1, 3, 32, 32), 10, input_dtype="uint8")
    assert f.x_train.dtype == np.float32 and 0.0 <= f.x_train.min() and f.x_train.max() <= 1.0
    assert np.abs(f.x_train * 255 - u.x_train).max() <= 0.5 + 1e-4
    assert np.array_equal(f.y_train, u.y_train)


def test_digits_native_size_is_the_raw_values_and_the_split_is_the_seeded_permutation():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = load_data("digits", (4, 1, 8, 8), 10, input_dtype="uint8", seed=3)
    order = np.random.default_rng(3).permutation(DIGITS_N)
    x, y = _all_in_order(ds)
    assert np.array_equal(y, raw.target[order])
    assert np.array_equal(x[:, 0], np.rint(raw.images[order] * 255 / 16).astype(np.uint8))


def test_split_is_seeded_and_sized_by_val_fraction():
    a = load_data("digits", (1, 1, 8, 8), 10, seed=1, val_fraction=0.1)
    b = load_data("digits", (1, 1, 8, 8), 10, seed=1, val_fraction=0.1)
    c = load_data("digits", (1, 1, 8, 8), 10, seed=2, val_fraction=0.1)
    assert len(a.y_val) == 180 and len(a.y_train) == DIGITS_N - 180
    assert np.array_equal(a.y_train, b.y_train) and np.array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.y_train, c.y_train)


def test_digits_with_more_outputs_than_classes_is_fine():
    assert load_data("digits", (1, 1, 8, 8), 12).num_classes == 12


def test_digits_needs_a_model_with_ten_classes():
    with raises_one_line(r"digits: the data set has 10 classes but the model has 5"):
        load_data("digits", (1, 1, 8, 8), 5)


def test_image_sources_need_4d_input_shape(tmp_path: Path):
    with raises_one_line(r"digits: the model input shape \(1, 64\) is not 4-D N,C,H,W"):
        load_data("digits", (1, 64), 10)
    root = _image_folder(tmp_path / "imgs", {"a": (255, 0, 0)})
    with raises_one_line(r"is not 4-D"):
        load_data(f"imagefolder:{root}", (1, 3, 8), 10)


def test_image_sources_need_1_or_3_channels():
    with raises_one_line(r"digits: the model takes 2 channels"):
        load_data("digits", (1, 2, 8, 8), 10)


def test_unknown_spec_lists_the_three_forms():
    for spec in ("mnist", "npz:", "imagefolder:", "csv:/tmp/x.csv"):
        with raises_one_line(r"unknown data spec .*'digits', 'imagefolder:DIR' or 'npz:FILE'"):
            load_data(spec, (1, 1, 8, 8), 10)


def test_bad_common_arguments():
    with raises_one_line(r"val_fraction 1.0 is not in \(0, 1\)"):
        load_data("digits", (1, 1, 8, 8), 10, val_fraction=1.0)
    with raises_one_line(r"num_classes 0 is not a positive integer"):
        load_data("digits", (1, 1, 8, 8), 0)
    with raises_one_line(r"input dtype 'floaty' is not a numpy dtype"):
        load_data("digits", (1, 1, 8, 8), 10, input_dtype="floaty")
    with raises_one_line(r"digits: images cannot be given as int8"):
        load_data("digits", (1, 1, 8, 8), 10, input_dtype="int8")
    for shape in ((1, "a", 8, 8), (1, 0, 8, 8), 7, ()):
        with raises_one_line(r"input shape .* is not a tuple of positive sizes"):
            load_data("digits", shape, 10)  # type: ignore[arg-type]


def test_data_error_is_a_cogent_error():
    assert issubclass(DataError, CogentError)


# -- imagefolder -------------------------------------------------------------------


def test_imagefolder_rgb_float(tmp_path: Path):
    root = _image_folder(tmp_path / "imgs", {"b_blue": (0, 0, 255), "a_red": (255, 0, 0)}, per_class=4)
    (root / "a_red" / "notes.txt").write_text("not an image")
    (root / "README").write_text("stray file at the top")
    ds = load_data(f"imagefolder:{root}", (1, 3, 8, 8), 3)
    assert ds.name == f"imagefolder:{root}"
    x, y = _all_in_order(ds)
    assert x.shape == (8, 3, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert len(ds.y_val) == 2 and len(ds.y_train) == 6
    # classes sorted by name: a_red -> 0, b_blue -> 1 (jpeg allows a little colour error)
    red, blue = x[y == 0], x[y == 1]
    assert len(red) == 4 and len(blue) == 4
    assert red[:, 0].min() > 0.9 and red[:, 2].max() < 0.1
    assert blue[:, 2].min() > 0.9 and blue[:, 0].max() < 0.1


def test_imagefolder_grayscale_uint8(tmp_path: Path):
    root = _image_folder(tmp_path / "imgs", {"white": (255, 255, 255), "black": (0, 0, 0)})
    ds = load_data(f"imagefolder:{root}", (1, 1, 5, 6), 2, input_dtype="uint8")
    x, y = _all_in_order(ds)
    assert x.shape == (6, 1, 5, 6) and x.dtype == np.uint8
    assert x[y == 0].max() <= 3 and x[y == 1].min() >= 252  # black sorts first


def test_imagefolder_missing_dir(tmp_path: Path):
    with raises_one_line(r"imagefolder:.*nope: directory .*nope does not exist"):
        load_data(f"imagefolder:{tmp_path / 'nope'}", (1, 3, 8, 8), 10)


def test_imagefolder_without_classes_or_images(tmp_path: Path):
    with raises_one_line(r"no class subdirectories"):
        load_data(f"imagefolder:{tmp_path}", (1, 3, 8, 8), 10)
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("hi")
    with raises_one_line(r"no images \(.png, .jpg, .jpeg, .bmp\)"):
        load_data(f"imagefolder:{tmp_path}", (1, 3, 8, 8), 10)


def test_imagefolder_with_more_classes_than_the_model(tmp_path: Path):
    root = _image_folder(tmp_path / "imgs", {"a": (1, 2, 3), "b": (4, 5, 6), "c": (7, 8, 9)}, per_class=1)
    with raises_one_line(r"3 class directories but the model has 2 classes"):
        load_data(f"imagefolder:{root}", (1, 3, 8, 8), 2)


def test_imagefolder_unreadable_image_is_named(tmp_path: Path):
    root = _image_folder(tmp_path / "imgs", {"a": (1, 2, 3), "b": (4, 5, 6)}, per_class=2)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with raises_one_line(r"cannot read image .*broken\.png"):
        load_data(f"imagefolder:{root}", (1, 3, 8, 8), 2)


# -- npz ----------------------------------------------------------------------------


def test_npz_float_and_uint8(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(10, 2, 3)).astype(np.float64)
    y = np.arange(10) % 4
    spec = _save_npz(tmp_path / "d.npz", x=x, y=y.astype(np.int32))
    ds = load_data(spec, (1, 2, 3), 4)
    xa, ya = _all_in_order(ds)
    order = np.random.default_rng(0).permutation(10)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert np.allclose(xa, x[order]) and np.array_equal(ya, y[order])
    assert (len(ds.y_train), len(ds.y_val)) == (8, 2)
    u = load_data(spec, (1, 2, 3), 4, input_dtype="uint8")
    assert u.x_train.dtype == np.uint8
    assert np.array_equal(np.concatenate([u.x_train, u.x_val]), np.rint(x[order]).astype(np.uint8))


def test_npz_whole_float_labels_are_accepted(tmp_path: Path):
    spec = _save_npz(tmp_path / "d.npz", x=np.zeros((4, 3)), y=np.array([0.0, 1.0, 2.0, 1.0]))
    assert load_data(spec, (1, 3), 3).y_train.dtype == np.int64


def test_npz_missing_file(tmp_path: Path):
    with raises_one_line(r"npz:.*missing\.npz: file .* does not exist"):
        load_data(f"npz:{tmp_path / 'missing.npz'}", (1, 3), 2)


def test_npz_not_an_npz(tmp_path: Path):
    bad = tmp_path / "bad.npz"
    bad.write_text("hello")
    with raises_one_line(r"cannot read .*bad\.npz as an \.npz"):
        load_data(f"npz:{bad}", (1, 3), 2)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with raises_one_line(r"holds a single array, not an \.npz"):
        load_data(f"npz:{single}", (1, 3), 2)


def test_npz_object_arrays_are_refused(tmp_path: Path):
    spec = _save_npz(tmp_path / "obj.npz", x=np.array([[1], [2, 3]], dtype=object), y=np.array([0, 1]))
    with raises_one_line(r"cannot read .*obj\.npz as an \.npz of plain arrays"):
        load_data(spec, (1, 1), 2)


def test_npz_missing_array(tmp_path: Path):
    spec = _save_npz(tmp_path / "d.npz", x=np.zeros((4, 3)), labels=np.zeros(4))
    with raises_one_line(r"no array 'y' \(found \['labels', 'x'\]\)"):
        load_data(spec, (1, 3), 2)


def test_npz_wrong_x_shape_names_the_expected_shape(tmp_path: Path):
    spec = _save_npz(tmp_path / "d.npz", x=np.zeros((4, 1, 8, 8)), y=np.zeros(4, dtype=np.int64))
    with raises_one_line(r"inputs have shape \(4, 1, 8, 8\) but the model expects \(N, 1, 4, 4\)"):
        load_data(spec, (1, 1, 4, 4), 2)
    with raises_one_line(r"the model expects \(N, 1, 8\)"):
        load_data(spec, (1, 1, 8), 2)


def test_npz_empty(tmp_path: Path):
    spec = _save_npz(tmp_path / "d.npz", x=np.zeros((0, 3)), y=np.zeros(0, dtype=np.int64))
    with raises_one_line(r"the data set is empty \(N == 0\)"):
        load_data(spec, (1, 3), 2)


def test_npz_bad_label_shapes(tmp_path: Path):
    spec = _save_npz(tmp_path / "a.npz", x=np.zeros((4, 3)), y=np.zeros((4, 1), dtype=np.int64))
    with raises_one_line(r"labels have shape \(4, 1\) but must be 1-D"):
        load_data(spec, (1, 3), 2)
    spec = _save_npz(tmp_path / "b.npz", x=np.zeros((5, 3)), y=np.zeros(4, dtype=np.int64))
    with raises_one_line(r"5 inputs but 4 labels"):
        load_data(spec, (1, 3), 2)


def test_npz_non_integer_labels(tmp_path: Path):
    spec = _save_npz(tmp_path / "a.npz", x=np.zeros((3, 3)), y=np.array([0.0, 0.5, 1.0]))
    with raises_one_line(r"labels have dtype float64 and are not whole class indices \(e\.g\. 0\.5\)"):
        load_data(spec, (1, 3), 2)
    spec = _save_npz(tmp_path / "b.npz", x=np.zeros((2, 3)), y=np.array(["cat", "dog"]))
    with raises_one_line(r"not whole class indices"):
        load_data(spec, (1, 3), 2)


def test_npz_labels_out_of_range(tmp_path: Path):
    spec = _save_npz(tmp_path / "foo.npz", x=np.zeros((12, 3)), y=np.arange(12))
    with raises_one_line(r"labels span 0\.\.11 but the model has 10 classes; relabel to 0\.\.9"):
        load_data(spec, (1, 3), 10)
    spec = _save_npz(tmp_path / "neg.npz", x=np.zeros((3, 3)), y=np.array([-1, 0, 1]))
    with raises_one_line(r"labels span -1\.\.1 but the model has 2 classes"):
        load_data(spec, (1, 3), 2)


def test_npz_float_outside_uint8_range(tmp_path: Path):
    spec = _save_npz(tmp_path / "d.npz", x=np.array([[0.0, 300.0], [1.0, 2.0]]), y=np.array([0, 1]))
    with raises_one_line(r"inputs range 0\.\.300 but the model takes uint8 pixels 0\.\.255"):
        load_data(spec, (1, 2), 2, input_dtype="uint8")
    spec = _save_npz(tmp_path / "nan.npz", x=np.array([[0.0, np.nan], [1.0, 2.0]]), y=np.array([0, 1]))
    with raises_one_line(r"NaN or infinity"):
        load_data(spec, (1, 2), 2)


def test_npz_needs_two_samples(tmp_path: Path):
    spec = _save_npz(tmp_path / "d.npz", x=np.zeros((1, 3)), y=np.array([0]))
    with raises_one_line(r"1 sample\(s\); need at least 2 samples"):
        load_data(spec, (1, 3), 2)


# -- from_loader --------------------------------------------------------------------


def test_from_loader_materialises_a_dataloader():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 1, 4, 4, generator=g)
    y = torch.arange(20) % 3
    ds = from_loader(DataLoader(TensorDataset(x, y), batch_size=6), (1, 1, 4, 4), 3)
    assert ds.name == "dataloader"
    assert ds.to_json() == {
        "name": "dataloader", "train_size": 15, "val_size": 5, "num_classes": 3,
        "input_shape": [1, 4, 4], "dtype": "float32",
    }
    order = np.random.default_rng(0).permutation(20)
    xa, ya = _all_in_order(ds)
    assert np.array_equal(xa, x.numpy()[order]) and np.array_equal(ya, y.numpy()[order])


def test_from_loader_casts_and_checks_like_npz():
    batches = [(np.full((2, 3), 7.0), [0, 1]), (np.full((2, 3), 9.0), [1, 0])]
    ds = from_loader(batches, (1, 3), 2, input_dtype="uint8", name="mine", val_fraction=0.5)
    assert ds.name == "mine" and ds.x_train.dtype == np.uint8 and len(ds.y_val) == 2
    with raises_one_line(r"mine: labels span 0\.\.5 but the model has 2 classes"):
        from_loader([(np.zeros((2, 3)), np.array([0, 5]))], (1, 3), 2, name="mine")
    with raises_one_line(r"dataloader: inputs have shape \(2, 4\) but the model expects \(N, 3\)"):
        from_loader([(np.zeros((2, 4)), np.array([0, 1]))], (1, 3), 2)


def test_from_loader_bad_batches():
    with raises_one_line(r"the loader yielded no batches"):
        from_loader([], (1, 3), 2)
    with raises_one_line(r"batch 0 is a ndarray, not an \(x, y\) pair"):
        from_loader([np.zeros((2, 3))], (1, 3), 2)
    with raises_one_line(r"batch 1 has inputs of shape \(2, 4\) but batch 0 had \(2, 3\)"):
        from_loader([(np.zeros((2, 3)), [0, 1]), (np.zeros((2, 4)), [0, 1])], (1, 3), 2)
    with raises_one_line(r"labels of shape \(2, 2\) are not 1-D"):
        from_loader([(np.zeros((2, 3)), np.zeros((2, 2), dtype=int))], (1, 3), 2)


def test_error_messages_never_span_lines():
    # a direct check of the helper, so a regression in it cannot hide multi-line messages
    with pytest.raises(AssertionError):
        with raises_one_line("x"):
            raise DataError("x\ny")
