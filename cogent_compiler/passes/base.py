"""Pass infrastructure: ``Pass``, ``PassContext``, ``PassResult``, ``PassManager``.

A pass is a frozen dataclass whose fields are its options; ``run`` takes a
graph and returns a ``PassResult`` holding a new graph (or the same one with
``modified=False``).  Passes never read the environment: configuration comes
from their fields or from the ``PassContext``.  The manager verifies the IR
after every pass, so a pass may assume valid IR and must leave valid IR.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cogent_compiler.ir import Graph

__all__ = ["Pass", "PassContext", "PassResult", "PassManager"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassContext:
    """Configuration shared by the passes of one run, under namespaced keys
    (``"split.check_tolerance"``), plus an optional progress callback."""

    config: Mapping[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    modified: bool


@dataclass(frozen=True)
class Pass:
    """Base class.  Subclasses set ``name`` (the command-line name) and implement ``run``."""

    name: ClassVar[str] = "pass"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def __call__(self, graph: Graph, ctx: PassContext | None = None) -> Graph:
        return self.run(graph, ctx or PassContext()).graph


@dataclass(frozen=True)
class PassManager:
    """Runs passes in order, verifying the IR after each; optionally to a fixed point."""

    passes: tuple[Pass, ...]
    max_iterations: int = 1

    def __init__(self, passes: Iterable[Pass], max_iterations: int = 1) -> None:
        object.__setattr__(self, "passes", tuple(passes))
        object.__setattr__(self, "max_iterations", max_iterations)

    def run(self, graph: Graph, ctx: PassContext | None = None) -> PassResult:
        ctx = ctx or PassContext()
        any_modified = False
        for _ in range(self.max_iterations):
            modified = False
            for p in self.passes:
                t0 = time.perf_counter()
                result = p.run(graph, ctx)
                result.graph.verify()
                log.debug("pass %s: modified=%s in %.3fs", p.name, result.modified, time.perf_counter() - t0)
                if ctx.progress is not None:
                    ctx.progress(f"pass {p.name}: {'changed' if result.modified else 'no change'}")
                graph = result.graph
                modified |= result.modified
            any_modified |= modified
            if not modified:
                break
        return PassResult(graph, any_modified)
