"""Run a device program as a K-times slower CPU: ``python -m cogent_compiler.testbed.slowdown K MODULE [ARG...]``.

Every inference's compute -- a bundle half (``Half.run``) or the eager
model (``testbed.eager.infer``) -- runs ``K`` times back to back at full
speed, and the last answer is kept: each request's compute takes ``K``
times as long whatever its size, as on a device ``K`` times slower than
this core.  Everything else (reading the input, casting, the socket) runs
once.  Then ``MODULE``'s ``main(ARGS)`` runs as ``python -m MODULE`` would.

Why not only a CPU quota: the kernel's smallest quota is 1 ms per period,
so at 10 % the device may run 1 ms of work per 10 ms at full speed, and a
head needing 0.2 ms per request is never slowed at all -- a pruned model
looked ten times faster than a weak device would run it.  (``SCHED_DEADLINE``
with a 200 us period was tried too: its budget is enforced at the scheduler
tick, 4 ms here, so a kernel that makes no system call ran unthrottled.)
What repeating does not slow is the work around the compute, and it runs
with warm caches after the first pass.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "repeated"]


def repeated(f: Callable[..., Any], k: int) -> Callable[..., Any]:
    """``f`` run ``k`` times per call, returning the last result."""

    def run(*args: Any, **kwargs: Any) -> Any:
        for _ in range(k - 1):
            f(*args, **kwargs)
        return f(*args, **kwargs)

    run.__wrapped__ = f  # type: ignore[attr-defined]
    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        k = int(args[0])
        module = args[1]
    except (IndexError, ValueError):
        print("usage: python -m cogent_compiler.testbed.slowdown K MODULE [ARG...]  (K: a whole number, 1 or more)", file=sys.stderr)
        return 2
    if k < 1:
        print(f"slowdown: K {k}: give a whole number, 1 or more", file=sys.stderr)
        return 2
    from cogent_compiler.runtime.executor import Half
    from cogent_compiler.testbed import eager

    Half.run = repeated(Half.run, k)  # type: ignore[method-assign]
    eager.infer = repeated(eager.infer, k)
    target = importlib.import_module(module)
    sys.argv = [module, *args[2:]]
    return int(target.main(args[2:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
