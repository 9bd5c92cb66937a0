"""Half: loading real TVM artifacts and running them against torch eager."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from cogent_compiler.errors import RuntimeFailure, TamperedBundleError
from cogent_compiler.runtime.executor import Half

if TYPE_CHECKING:
    from conftest import Bundles

TOL = {"rtol": 1e-4, "atol": 1e-4}


def test_head_and_tail_match_torch(bundles: Bundles) -> None:
    head = Half.load(bundles.device("split"), role="device")
    tail = Half.load(bundles.edge("split"), role="edge")
    assert head.output_names == ["relu"] and tail.output_names == ["logits"]
    (boundary,) = head.run([bundles.x])
    np.testing.assert_allclose(boundary, bundles.boundary, **TOL)
    (logits,) = tail.run([boundary])
    np.testing.assert_allclose(logits, bundles.logits, **TOL)
    assert head.load_seconds > 0


def test_whole_model_matches_torch(bundles: Bundles) -> None:
    half = Half.load(bundles.device("device_only"))
    (logits,) = half.run([bundles.x])
    np.testing.assert_allclose(logits, bundles.logits, **TOL)


def test_empty_half_passes_inputs_through(bundles: Bundles) -> None:
    half = Half.load(bundles.device("edge_only"))
    assert half.is_empty
    (out,) = half.run([bundles.x])
    assert out is bundles.x


def test_wrong_inputs_are_refused_with_a_clear_message(bundles: Bundles) -> None:
    half = Half.load(bundles.device("split"), warmup=False)
    with pytest.raises(
        RuntimeFailure, match=r"input 'x' has shape \[1, 3, 8, 8\] float32, expected \[1, 3, 16, 16\] float32"
    ):
        half.run([np.zeros((1, 3, 8, 8), np.float32)])
    with pytest.raises(RuntimeFailure, match=r"float64, expected \[1, 3, 16, 16\] float32"):
        half.run([bundles.x.astype(np.float64)])
    with pytest.raises(RuntimeFailure, match=r"got 2 inputs, expected 1 \(x\)"):
        half.run([bundles.x, bundles.x])


def test_non_contiguous_input_is_accepted(bundles: Bundles) -> None:
    half = Half.load(bundles.device("split"), warmup=False)
    x = np.asfortranarray(bundles.x)
    np.testing.assert_allclose(half.run([x])[0], bundles.boundary, **TOL)


def test_concurrent_runs_from_threads_are_serialised(bundles: Bundles) -> None:
    half = Half.load(bundles.device("device_only"), warmup=False)
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(bundles.x.shape).astype(np.float32) for _ in range(4)]
    want = [bundles.expected(x) for x in xs]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                np.testing.assert_allclose(half.run([xs[i]])[0], want[i], **TOL)
        except Exception as e:  # collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tampered_library_is_refused(bundles: Bundles, tmp_path: Path) -> None:
    d = _copy(bundles.edge("split"), tmp_path / "edge")
    with open(d / "tail.so", "ab") as f:
        f.write(b"\0")
    with pytest.raises(TamperedBundleError, match=r"tail\.so: sha256 .* does not match"):
        Half.load(d)


def test_missing_params_file_is_refused(bundles: Bundles, tmp_path: Path) -> None:
    d = _copy(bundles.edge("split"), tmp_path / "edge")
    (d / "tail.npz").unlink()
    with pytest.raises(TamperedBundleError, match="missing"):
        Half.load(d)


def test_wrong_role_and_missing_manifest(bundles: Bundles, tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="is a edge bundle, expected a device bundle"):
        Half.load(bundles.edge("split"), role="device")
    with pytest.raises(RuntimeFailure, match="no manifest.json"):
        Half.load(tmp_path)


def test_unloadable_library_is_a_runtime_failure(bundles: Bundles, tmp_path: Path) -> None:
    d = _copy(bundles.edge("split"), tmp_path / "edge")
    (d / "tail.so").write_bytes(b"not an ELF file")
    with pytest.raises(RuntimeFailure, match=r"tail\.so: cannot load entry 'main'"):
        Half.load(d, verify=False)
