"""The TVM lowering stage by stage (``cogent_compiler.backends.pipeline``).

Each stage is checked for its own effect on the IR and, end to end, for
outputs that match PyTorch eager.  Real torch, TVM, nvcc; nothing is mocked.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from cogent_compiler.backends import pipeline, resolve_target
from cogent_compiler.backends.tvm_backend import compile_program, tvm_target_for
from cogent_compiler.bundle import write_half
from cogent_compiler.errors import BackendError
from cogent_compiler.ir import TensorInfo
from cogent_compiler.passes import FoldBatchNorm
from cogent_compiler.runtime.executor import Half

LLVM = resolve_target("llvm")
CUDA = resolve_target("cuda:sm_80")


class _MobileBlock(torch.nn.Module):
    """conv-bn-ReLU6, a strided depthwise conv-ReLU6, a 1x1 conv with a residual, pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(16)
        self.dw = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.pw = torch.nn.Conv2d(16, 16, 1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.relu6(self.bn(self.stem(x)))
        z = torch.nn.functional.relu6(self.dw(y))
        z = z + self.pw(z)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(z, 1), 1))


@pytest.fixture(scope="module")
def mobile():
    """(model, input, folded ExportedProgram) of ``_MobileBlock`` with non-trivial batch-norm statistics."""
    from cogent_compiler.frontend import from_module, trace

    torch.manual_seed(0)
    model = _MobileBlock().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 18, 18)
    return model, x, FoldBatchNorm()(trace(from_module(model, (x,), name="mobile"))).source


@pytest.fixture(scope="module")
def tiny_program(tiny_graph):
    return FoldBatchNorm()(tiny_graph).source


def _imported(program):
    """The program as ``compile_program`` imports it: a Relax module and the detached weights."""
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    mod, params = relax.frontend.detach_params(from_exported_program(program, keep_params_as_input=True))
    return mod, [p.numpy() for p in params["main"]]


def _prepared(program, layout=None, target=None):
    """The imported program through ``prepare`` and ``transform_params`` (for this CPU by default): the module ``schedule`` takes."""
    target = target or tvm_target_for(LLVM)
    mod, weights = _imported(program)
    return pipeline.transform_params(pipeline.prepare(mod, target, layout=layout), weights)[0]


def _prim_funcs(mod):
    import tvm

    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def _scheduled(func) -> bool:
    return bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))


def _main_param_shapes(mod):
    main = mod["main"]
    return [tuple(int(d) for d in p.ty.shape) for p in main.params[int(main.attrs["num_input"]):]]


def _run(folder, compiled, x, out_shape=(1, 10)):
    """Run ``compiled`` through the bundle runtime (``Half``), as a deployed half runs it."""
    out = [TensorInfo("y", tuple(out_shape), "float32")]
    write_half(
        folder, role="device", model="m", target=LLVM, library=compiled.library, params=compiled.params,
        kernels=compiled.kernels, inputs=[TensorInfo("x", tuple(x.shape), "float32")], outputs=out,
        model_outputs=out, plan={},
    )
    (got,) = Half.load(folder).run([x.numpy()])
    return got


def _eager(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


# -- prepare: decompose, convert-layout, lift-params, legalize, fuse ---------------------------------


def test_prepare_legalizes_and_fuses_main_and_is_deterministic(tiny_program):
    import tvm
    import tvm_ffi

    target = tvm_target_for(LLVM)
    first = pipeline.prepare(_imported(tiny_program)[0], target)
    second = pipeline.prepare(_imported(tiny_program)[0], target)
    assert tvm_ffi.structural_hash(first) == tvm_ffi.structural_hash(second)
    tvm.ir.assert_structural_equal(first, second)

    main = first["main"].script()
    assert "R.nn.conv2d" not in main and "R.matmul" not in main  # legalize: operators became call_tir
    kernels = _prim_funcs(first)
    # fuse: the stem's bias add and ReLU run in the convolution's kernel
    assert any("conv2d" in n and "relu" in n for n in kernels), sorted(kernels)
    assert not any(_scheduled(f) for f in kernels.values())  # scheduling is the next stage's job


def test_prepare_lifts_weight_only_work_out_of_main(tiny_program):
    mod, weights = _imported(tiny_program)
    before = [w.shape for w in weights]
    prepared = pipeline.prepare(mod, tvm_target_for(LLVM), layout="NCHW")
    transform = prepared[pipeline.TRANSFORM_PARAMS]
    assert "R.call_tir" not in transform.script()  # kept as Relax: not legalized, so no tuning task
    after = _main_param_shapes(prepared)
    # the linear layer's weight is taken transposed, the conv biases already broadcastable
    assert (10, 8) in before and (10, 8) not in after and (8, 10) in after
    assert after.count((1, 8, 1, 1)) == 3 and (8,) not in after
    assert sorted(k for k in _prim_funcs(prepared) if "transpose" in k) == []  # no weight transpose left in main

    rest, new = pipeline.transform_params(prepared, weights)
    assert pipeline.TRANSFORM_PARAMS not in [gv.name_hint for gv in rest.get_global_vars()]
    assert [w.shape for w in new] == after
    fc = weights[before.index((10, 8))]
    np.testing.assert_array_equal(new[after.index((8, 10))], fc.T)


def test_prepare_refuses_attached_parameters_and_unknown_layouts(tiny_program):
    from tvm.relax.frontend.torch import from_exported_program

    attached = from_exported_program(tiny_program, keep_params_as_input=True)
    with pytest.raises(BackendError, match="detach them first"):
        pipeline.prepare(attached, tvm_target_for(LLVM))
    with pytest.raises(BackendError, match="layout 'NCHW8c' is not supported"):
        pipeline.prepare(_imported(tiny_program)[0], tvm_target_for(LLVM), layout="NCHW8c")


def test_tuning_tasks_of_a_prepared_module_are_exactly_mains_kernels(tiny_program):
    """What ``tuning.py`` extracts: one task per distinct kernel of ``main``, none from the lifted transform."""
    from tvm.s_tir import meta_schedule as ms

    target = tvm_target_for(LLVM)
    prepared = pipeline.prepare(_imported(tiny_program)[0], target)
    tasks = ms.relax_integration.extract_tasks(prepared, target)
    kernels = _prim_funcs(prepared)
    assert tasks and {t.task_name for t in tasks} <= set(kernels)
    # a task's weight is how often main calls it: together, every call of main and nothing else
    assert sum(t.weight for t in tasks) == prepared["main"].script().count("R.call_tir")


# -- convert-layout ------------------------------------------------------------------------------------


def test_nhwc_weights_are_hwio_and_relu6_stays_fused(mobile):
    _, _, program = mobile
    mod, weights = _imported(program)
    prepared = pipeline.prepare(mod, tvm_target_for(LLVM), layout="NHWC")
    rest, new = pipeline.transform_params(prepared, weights)
    stem = weights[[w.shape for w in weights].index((16, 3, 3, 3))]
    np.testing.assert_array_equal(new[[w.shape for w in new].index((3, 3, 3, 16))], stem.transpose(2, 3, 1, 0))
    kernels = _prim_funcs(rest)
    # ReLU6 (clip) becomes maximum/minimum, which keep NHWC and fuse into the convolutions
    assert not any("clip" in n for n in kernels), sorted(kernels)
    assert all("conv2d" in n for n in kernels if "maximum" in n) and sum("maximum" in n for n in kernels) == 2
    # only the input's and the pooled output's layout changes remain (no transposes around every ReLU6)
    assert sum("transpose" in n for n in kernels) <= 2, sorted(kernels)


@pytest.mark.parametrize("layout", pipeline.LAYOUTS)
def test_each_layout_matches_pytorch_through_the_runtime(mobile, layout, tmp_path):
    model, x, program = mobile
    compiled = compile_program(program, "torch", LLVM, tmp_path, name="mobile", layout=layout)
    assert compiled.stages == pipeline.CPU_STAGES
    got = _run(tmp_path, compiled, x)
    assert float(np.abs(got - _eager(model, x)).max()) <= 1e-4


def test_nhwc_and_nchw_agree_on_the_tiny_cnn(tiny_model, tiny_program, tmp_path):
    model, x = tiny_model
    outs = {}
    for layout in pipeline.LAYOUTS:
        compiled = compile_program(tiny_program, "torch", LLVM, tmp_path / layout, name="tiny", layout=layout)
        outs[layout] = _run(tmp_path / layout, compiled, x)
    assert float(np.abs(outs["NCHW"] - outs["NHWC"]).max()) <= 1e-5
    assert float(np.abs(outs["NHWC"] - _eager(model, x)).max()) <= 1e-4


def test_a_vision_transformer_compiles_in_nhwc_and_matches_pytorch(tmp_path):
    # nn.MultiheadAttention imports with squeeze(axis=-2), on which ConvertLayout failed (std::bad_alloc)
    from tvm import relax

    from cogent_compiler.frontend import from_module
    from tiny_models import tiny_vit

    model, x = tiny_vit(), torch.randn(1, 3, 32, 32)
    program = from_module(model, (x,), name="vit").program
    mod, _ = _imported(program)
    assert any(int(a) < 0 for c in _calls(mod["main"]) if c.op.name == "relax.squeeze" for a in c.attrs.axis)
    fixed = pipeline._squeeze_positive_axes(mod)
    squeezes = [c for c in _calls(fixed["main"]) if c.op.name == "relax.squeeze"]
    assert squeezes and all(int(a) >= 0 for c in squeezes for a in c.attrs.axis)
    with tvm_target_for(LLVM):
        converted = relax.transform.ConvertLayout(pipeline._CONV2D_LAYOUT["NHWC"])(fixed)
    (conv,) = [c for c in _calls(converted["main"]) if c.op.name == "relax.nn.conv2d"]  # the patch embedding
    assert conv.attrs.data_layout == "NHWC"
    compiled = compile_program(program, "torch", LLVM, tmp_path, name="vit")
    assert float(np.abs(_run(tmp_path, compiled, x) - _eager(model, x)).max()) <= 1e-4


def _calls(func):
    """Every operator call in a Relax function, in order."""
    import tvm
    from tvm import relax

    found = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            found.append(e)

    relax.analysis.post_order_visit(func, visit)
    return found


def test_an_onnx_program_goes_through_the_same_stages(mobile, tmp_path):
    """ONNX import marks the inputs (``num_input``) too, so lifting and the layout change apply."""
    from cogent_compiler.backends.onnxruntime_backend import to_onnx

    model, x, program = mobile
    proto = to_onnx(program, "torch", name="mobile")
    compiled = compile_program(proto, "onnx", LLVM, tmp_path, name="mobile")
    with np.load(tmp_path / compiled.params) as z:
        shapes = [z[k].shape for k in z.files]
    assert (3, 3, 3, 16) in shapes and (16, 3, 3, 3) not in shapes  # the default NHWC, weights as HWIO
    assert float(np.abs(_run(tmp_path, compiled, x) - _eager(model, x)).max()) <= 1e-4


# -- schedule -------------------------------------------------------------------------------------------


def test_cpu_rule_schedules_every_kernel_in_both_layouts(mobile):
    _, _, program = mobile
    target = tvm_target_for(LLVM)
    for layout in pipeline.LAYOUTS:
        scheduled = _prim_funcs(pipeline.schedule(_prepared(program, layout), target))
        assert all(_scheduled(f) for f in scheduled.values()), [n for n, f in scheduled.items() if not _scheduled(f)]
        convs = [f.script() for n, f in scheduled.items() if "conv2d" in n]
        assert convs and all("T.parallel" in s and "T.vectorized" in s for s in convs)


def test_block_tile_takes_a_divisor_or_even_tiles_with_a_tail():
    assert [pipeline.block_tile(n, 16) for n in (7, 16, 56, 112, 224)] == [7, 16, 14, 16, 16]  # divisors: no tail
    # prime or badly divisible counts: as few tiles as 16 allows, of even size (not one-row tiles)
    assert [pipeline.block_tile(n, 16) for n in (17, 35, 197)] == [9, 12, 16]
    assert pipeline.largest_divisor(1000, 16) == 10


@pytest.mark.parametrize("rows", [37, 197])
def test_a_linear_layer_over_a_prime_number_of_tokens_is_tiled_with_a_guarded_tail(rows, tmp_path):
    from cogent_compiler.frontend import from_module

    torch.manual_seed(0)
    model, x = torch.nn.Linear(24, 10).eval(), torch.randn(1, rows, 24)
    program = from_module(model, (x,), name="fc").program
    scheduled = pipeline.schedule(_prepared(program), tvm_target_for(LLVM))
    (matmul,) = [f.script() for n, f in _prim_funcs(scheduled).items() if "matmul" in n]
    tile = pipeline.block_tile(rows, pipeline.CPU_SCHEDULE[512].block)
    assert tile > 1 and f"T.unroll(T.int64({tile}))" in matmul and "T.where" in matmul  # a register tile, its last one guarded
    compiled = compile_program(program, "torch", LLVM, tmp_path, name="fc")
    assert float(np.abs(_run(tmp_path, compiled, x, (1, rows, 10)) - _eager(model, x)).max()) <= 1e-5


def test_softmax_and_layer_norm_are_scheduled_by_the_reduction_rule():
    from cogent_compiler.frontend import from_module
    from tiny_models import tiny_vit

    mod = _prepared(from_module(tiny_vit(), (torch.randn(1, 3, 32, 32),), name="vit").program)
    funcs = _prim_funcs(mod)
    norms = {n: f for n, f in funcs.items() if "layer_norm" in n or "softmax" in n}
    assert norms and all(pipeline.schedule_cpu_primfunc(f, pipeline.CPU_SCHEDULE[512]) is None for f in norms.values())  # not the tiled rule's
    scheduled = _prim_funcs(pipeline.schedule(mod, tvm_target_for(LLVM)))
    assert all(_scheduled(scheduled[n]) and "T.parallel" in scheduled[n].script() for n in norms)


def test_schedule_with_an_empty_database_equals_schedule_without_one(tiny_program):
    import tvm
    from tvm.s_tir import meta_schedule as ms

    target = tvm_target_for(LLVM)
    mod = _prepared(tiny_program)
    tvm.ir.assert_structural_equal(pipeline.schedule(mod, target, database=ms.database.MemoryDatabase()), pipeline.schedule(mod, target))


def _database_with_identity_record(task, target):
    """A MemoryDatabase holding one record for ``task`` whose schedule leaves its loop nest as it is.

    (Its trace only looks loops up: a database ignores a record with an empty trace.)
    """
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    db = ms.database.MemoryDatabase()
    task_mod = task.dispatched[0]
    workload = db.commit_workload(task_mod)
    sch = s_tir.Schedule(task_mod)
    sch.get_loops(sch.get_child_blocks(sch.get_sblock("root"))[0])
    db.commit_tuning_record(
        ms.database.TuningRecord(sch.trace, workload, run_secs=[1e-3], target=target, args_info=ms.arg_info.ArgInfo.from_prim_func(task_mod["main"]))
    )
    return db


def test_database_records_win_and_the_rules_do_the_rest(tiny_model, tiny_program, tmp_path):
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    target = tvm_target_for(LLVM)
    mod = _prepared(tiny_program)
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target) if "conv2d" in t.task_name]
    task = tasks[0]
    db = _database_with_identity_record(task, target)

    with_db = _prim_funcs(pipeline.schedule(mod, target, database=db))
    without = _prim_funcs(pipeline.schedule(mod, target))
    assert all(_scheduled(f) for f in with_db.values())
    recorded = with_db[task.task_name]
    # the record's (identity) schedule was applied and the rule left the kernel alone
    assert "T.parallel" in without[task.task_name].script()
    assert "T.parallel" not in recorded.script() and "T.vectorized" not in recorded.script()
    others = [n for n in with_db if n != task.task_name]
    assert others and all(tvm_ffi.structural_equal(with_db[n], without[n]) for n in others)

    model, x = tiny_model
    compiled = compile_program(tiny_program, "torch", LLVM, tmp_path, name="tiny", database=db)
    assert float(np.abs(_run(tmp_path, compiled, x) - _eager(model, x)).max()) <= 1e-4


def test_the_untuned_baseline_takes_no_pipeline_options(tiny_program, tmp_path):
    with pytest.raises(BackendError, match="takes no database, layout or kernel_info"):
        compile_program(tiny_program, "torch", LLVM, tmp_path, cpu_schedules=False, layout="NHWC")


# -- cuda: dlight's GPU rules -----------------------------------------------------------------------------


def test_cuda_schedule_binds_every_kernel_to_gpu_threads(mobile):
    _, _, program = mobile
    target = CUDA.tvm_target()
    mod = _prepared(program, target=target)
    assert not any(_scheduled(f) for f in _prim_funcs(mod).values())
    scheduled = _prim_funcs(pipeline.schedule(mod, target))
    assert scheduled
    for name, func in scheduled.items():
        assert _scheduled(func), name
        assert 'T.thread_binding' in func.script() and "threadIdx.x" in func.script(), name


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit) to compile CUDA kernels")
def test_cuda_compile_goes_through_the_stages(mobile, tmp_path):
    _, _, program = mobile
    compiled = compile_program(program, "torch", CUDA, tmp_path, name="mobile")
    assert compiled.stages == pipeline.CUDA_STAGES and compiled.kernels
    with np.load(tmp_path / compiled.params) as z:
        shapes = [z[f"p{i}"].shape for i in range(len(z.files))]
    mod, _ = _imported(program)
    assert shapes == _main_param_shapes(pipeline.prepare(mod, CUDA.tvm_target()))
