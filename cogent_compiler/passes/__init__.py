"""Pass infrastructure and passes: analyses and transforms over the graph IR."""

from __future__ import annotations

from cogent_compiler.passes.base import Pass, PassContext, PassManager, PassResult
from cogent_compiler.passes.fold_batch_norm import FoldBatchNorm
from cogent_compiler.passes.partition import Partition, frontier_cut, frontier_cuts, partition_at, single_tensor_cuts
from cogent_compiler.passes.split import SplitProgram, split_program

__all__ = [
    "Pass",
    "PassContext",
    "PassManager",
    "PassResult",
    "FoldBatchNorm",
    "Partition",
    "frontier_cut",
    "frontier_cuts",
    "partition_at",
    "single_tensor_cuts",
    "SplitProgram",
    "split_program",
]
