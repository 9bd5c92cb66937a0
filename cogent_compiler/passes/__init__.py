"""Pass infrastructure and passes: analyses and transforms over the graph IR."""

from __future__ import annotations

from cogent_compiler.passes.base import Pass, PassContext, PassManager, PassResult
from cogent_compiler.passes.fold_batch_norm import FoldBatchNorm
from cogent_compiler.passes.prune_channels import PruneChannels, kept_channels
from cogent_compiler.passes.prune_groups import PruneAnalysis, PruneGroup, find_prune_groups, prune_groups_of
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
    "PruneAnalysis",
    "PruneChannels",
    "PruneGroup",
    "find_prune_groups",
    "kept_channels",
    "prune_groups_of",
    "SplitProgram",
    "split_program",
]
