"""Time the original model in PyTorch eager: what a user would run on the device without Cogent.

Run as ``python -m cogent_compiler.testbed.eager MODEL --input x.npy --repeat N --json``
(inside the testbed's device namespace and quota).  Single-threaded, like the
one-core device it stands for.  The first inference is a warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["infer", "main"]


def infer(module: Any, x: Any) -> Any:
    """One inference: what each timed run does (``testbed.slowdown`` repeats it to emulate a slower device)."""
    return module(x)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cogent_compiler.testbed.eager", description=__doc__)
    p.add_argument("model")
    p.add_argument("--input-shape")
    p.add_argument("--trust-pickle", action="store_true")
    p.add_argument("--input-pixels", help="the input is uint8 pixels normalised by the model (cogentc --input-pixels)")
    p.add_argument("--input", required=True, help="input .npy")
    p.add_argument("--output", help="where to write the output .npy")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from cogent_compiler.errors import CogentError
    from cogent_compiler.frontend import load_model, parse_shape

    torch.set_num_threads(args.threads)
    try:
        loaded = load_model(args.model, input_shape=parse_shape(args.input_shape) if args.input_shape else None, trust_pickle=args.trust_pickle)
        if args.input_pixels:
            from cogent_compiler.frontend.pixels import parse_pixels, with_pixel_input

            loaded = with_pixel_input(loaded, parse_pixels(args.input_pixels))
    except CogentError as e:
        print(f"eager: error: {e}", file=sys.stderr)
        return 2
    if loaded.kind != "torch":
        print(f"eager: error: {args.model} is not a PyTorch model; eager timing needs one", file=sys.stderr)
        return 2
    module = loaded.program.module()
    x = torch.from_numpy(np.load(args.input, allow_pickle=False))
    runs = []
    with torch.inference_mode():
        y = infer(module, x)  # warm-up
        for _ in range(args.repeat):
            t = time.perf_counter()
            infer(module, x)
            runs.append((time.perf_counter() - t) * 1e3)
    y = y[0] if isinstance(y, (tuple, list)) else y
    if args.output:
        np.save(args.output, y.numpy(), allow_pickle=False)
    report = {"runs_ms": runs, "threads": args.threads}
    print(json.dumps(report) if args.json else f"eager: median {sorted(runs)[len(runs) // 2]:.2f} ms over {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
