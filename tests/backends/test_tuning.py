"""MetaSchedule tuning on a budget, the per-target database, its export/merge, and RPC measurement.

Real TVM throughout: kernels are built and timed on this machine, locally or
through a TVM RPC tracker with two runners on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from cogent_compiler.backends import tuning
from cogent_compiler.backends.targets import resolve_target
from cogent_compiler.backends.tvm_backend import tvm_target_for
from cogent_compiler.errors import BackendError
from rpc_support import free_port, wait_for_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_program():
    """(exported program, module, input): two convolutions and a linear layer, big enough to time."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(16 * 16 * 16, 10),
    ).eval()
    x = torch.randn(1, 8, 16, 16)
    return torch.export.export(model, (x,)).run_decompositions({}), model, x


@pytest.fixture(scope="module")
def llvm():
    return tvm_target_for(resolve_target("llvm"))


def test_tune_on_a_budget_records_resume_and_compile(small_program, llvm, tmp_path):
    from cogent_compiler.backends.tvm_backend import compile_program
    from cogent_compiler.runtime.executor import _to_numpy

    program, model, x = small_program
    mod = tuning.prepared_module(program, "torch", llvm)
    lines: list[str] = []
    first = tuning.tune_module(mod, llvm, budget_s=25, root=tmp_path, threads=1, progress=lines.append)
    assert first.tasks >= 3 and first.hits_before == 0
    assert first.seeded == first.tasks and first.failed == 0  # every rule-based schedule measured
    assert first.trials > 0  # the search ran
    assert first.estimated_ms_after <= first.estimated_ms_before  # the database keeps the best of rule and search
    assert first.seconds < 25 + 90  # over by at most a batch (and the search's start-up)
    assert any("measured" in line for line in lines)

    # resume: everything is known, nothing is re-seeded, and the search picks up from the records
    second = tuning.tune_module(mod, llvm, budget_s=1, root=tmp_path, threads=1)
    assert second.hits_before == second.tasks == first.tasks and second.seeded == 0

    db = tuning.open_database(llvm, tmp_path)
    assert tuning.database_hits(mod, llvm, db) == (first.tasks, first.tasks)
    # a compile with the database is correct
    out = compile_program(program, "torch", resolve_target("llvm"), tmp_path / "built", database=db)
    import tvm
    from tvm import relax

    weights = np.load(tmp_path / "built" / out.params)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "built" / out.library)), tvm.cpu())
    args = [tvm.runtime.tensor(x.numpy())] + [tvm.runtime.tensor(weights[f"p{i}"]) for i in range(len(weights.files))]
    (got,) = _to_numpy(vm["main"](*args))
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_a_transformer_is_tuned_without_failures_and_its_gathers_are_left_to_the_rules(llvm, tmp_path):
    """Softmax and layer norm are seeded with dlight's reduction rule; ``take`` (the class token, random
    indices out of bounds in MetaSchedule's runner) is left out with a note instead of failing the estimate."""
    import torch

    from cogent_compiler.frontend import from_module
    from tiny_models import tiny_vit

    program = from_module(tiny_vit(), (torch.randn(1, 3, 32, 32),), name="vit").program
    prepared = tuning.prepared_module(program, "torch", llvm)
    result = tuning.tune_module(prepared, llvm, budget_s=1, root=tmp_path, threads=1)
    assert result.failed == 0 and result.seeded == result.tasks > 0 and result.estimated_ms_before is not None
    (note,) = [n for n in result.notes if "integer indices" in n]
    assert "take" in note and "softmax" not in note
    names = json.loads((tuning.database_dir(llvm, tmp_path) / tuning._NAMES).read_text()).values()
    assert any("layer_norm" in n for n in names) and any("softmax" in n for n in names)


def test_tunedb_show_export_merge(small_program, llvm, tmp_path, capsys):
    from cogent_compiler.cli import main

    program, _, _ = small_program
    mod = tuning.prepared_module(program, "torch", llvm)
    a, b = tmp_path / "a", tmp_path / "b"
    r = tuning.tune_module(mod, llvm, budget_s=0.1, root=a, threads=1)  # seeds only
    assert r.seeded == r.tasks and r.trials == 0

    assert main(["tunedb", "show", "--tunedb", str(a)]) == 0
    shown = capsys.readouterr().out
    assert f"{r.tasks} kernels, {r.seeded} records" in shown and "fused_conv2d" in shown

    exported = tmp_path / "llvm.tunedb.json"
    assert main(["tunedb", "export", "llvm", "-o", str(exported), "--tunedb", str(a), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == r.seeded
    assert main(["tunedb", "merge", str(exported), "--tunedb", str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) | {"database": None} == {"database": None, "added": r.seeded, "present": 0}
    assert main(["tunedb", "merge", str(exported), "--tunedb", str(b), "--json"]) == 0  # twice adds nothing
    assert json.loads(capsys.readouterr().out)["added"] == 0
    # the merged database serves a compile of the same program: every kernel hits
    assert tuning.database_hits(mod, llvm, tuning.open_database(llvm, b)) == (r.tasks, r.tasks)

    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["tunedb", "merge", str(bad), "--tunedb", str(b)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cogentc: error:") and "cogentc tunedb export" in err and "\n" not in err


def test_rpc_tracker_with_two_runners_on_loopback(small_program, llvm, tmp_path):
    program, _, _ = small_program
    mod = tuning.prepared_module(program, "torch", llvm)
    port = free_port()
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    servers = []
    try:
        wait_for_port(port, tracker)
        for i in range(2):
            log = open(tmp_path / f"server{i}.log", "w")
            own = free_port()
            servers.append((subprocess.Popen(
                [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(own),
                 "--port-end", str(own + 1), "--tracker", f"127.0.0.1:{port}", "--key", "cogent-test"],
                stdout=log, stderr=subprocess.STDOUT, env=env), log))
        spec = tuning.RPCSpec("127.0.0.1", port, "cogent-test", workers=2)
        _wait_for_runners(spec, 2)
        result = tuning.tune_module(mod, llvm, budget_s=0.1, root=tmp_path / "db", rpc=spec, threads=1)
        assert result.runner.startswith("rpc 127.0.0.1") and result.seeded == result.tasks and result.failed == 0
        db = tuning.open_database(llvm, tmp_path / "db")
        assert all(min(float(s) for s in rec.run_secs) > 0 for rec in db.get_all_tuning_records())
        # both runners served sessions
        served = [(tmp_path / f"server{i}.log").read_text() for i in range(2)]
        assert all("connection from" in s.lower() or "connected" in s.lower() for s in served), served

        with pytest.raises(BackendError, match="no runner with key 'nobody'"):
            tuning.tune_module(mod, llvm, budget_s=0.1, root=tmp_path / "db2", rpc=tuning.RPCSpec("127.0.0.1", port, "nobody"))
    finally:
        for proc, log in servers:
            proc.kill()
            log.close()
        tracker.kill()



def _wait_for_runners(spec: tuning.RPCSpec, n: int, timeout: float = 60) -> None:
    from tvm import rpc

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        queue = rpc.connect_tracker(spec.host, spec.port).summary()["queue_info"].get(spec.key, {})
        if int(queue.get("free", 0)) >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"{n} rpc runners did not register")


def test_tracker_errors_are_one_line():
    with pytest.raises(BackendError, match="expected HOST:PORT"):
        tuning.parse_rpc_tracker("localhost", "k")
    with pytest.raises(BackendError, match="needs --rpc-key"):
        tuning.parse_rpc_tracker("localhost:9190", None)
    spec = tuning.parse_rpc_tracker("10.0.0.2:9190", "rk3399", 2)
    assert (spec.host, spec.port, spec.key, spec.workers) == ("10.0.0.2", 9190, "rk3399", 2)


def test_arm_cannot_be_measured_here_without_a_tracker(small_program):
    arm = resolve_target("arm").tvm_target()
    program, _, _ = small_program
    mod = tuning.prepared_module(program, "torch", arm)
    with pytest.raises(BackendError, match="--rpc-tracker"):
        tuning.tune_module(mod, arm, budget_s=1, root=None)
