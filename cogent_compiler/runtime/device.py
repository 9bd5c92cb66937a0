"""The device client: runs a bundle's head locally and its tail on an edge server.

``DeviceClient`` loads the device half once and keeps one TCP connection
(``TCP_NODELAY``) to ``cogent-edge``; ``infer`` runs the head, sends the
tensors the manifest's ``send`` lists, and assembles the model's outputs from
the head's outputs and the edge's reply.  A plan whose ``send`` is empty runs
entirely here and needs no edge.

``cogent-device run DEVICE_BUNDLE --edge HOST:PORT --input x.npy --output y.npy``
is the command-line form; ``--repeat N`` times N more inferences and prints
the median.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from cogent_compiler.errors import ProtocolError, RuntimeFailure
from cogent_compiler.runtime import protocol
from cogent_compiler.runtime.cliutil import add_bundle_options
from cogent_compiler.runtime.executor import Half

__all__ = ["DeviceClient", "main", "parse_address"]

# Named explicitly: under `python -m` this module is `__main__`.
log = logging.getLogger("cogent_compiler.runtime.device")


def parse_address(text: str, default_port: int = protocol.DEFAULT_PORT) -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``[IPV6]:PORT`` or ``HOST`` (default port) into ``(host, port)``.

    Raises ``ValueError`` with a readable message for anything else.
    """
    host, sep, port_text = text.rpartition(":")
    if text.startswith("[") and "]" in text:
        inner, _, rest = text[1:].partition("]")
        host, port_text = inner, rest[1:] if rest.startswith(":") else ""
    elif not sep or ":" in host:  # no port, or a bare IPv6 address
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{text!r}: no host; expected HOST:PORT")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number in 1..65535; expected HOST:PORT")
    return host, int(port_text)


class DeviceClient:
    """The device side of a bundle: the head plus a connection to the edge.

    Not thread-safe: use one client per thread (each holds its own connection).
    """

    def __init__(self, bundle_dir: str | Path, *, verify: bool = True, warmup: bool = True) -> None:
        """Load the device half in ``bundle_dir`` (``TamperedBundleError`` if a file's hash differs).

        Raises ``RuntimeFailure`` when the manifest is inconsistent: a ``send``
        or model output that no tensor provides.
        """
        self.half = Half.load(bundle_dir, role="device", verify=verify, warmup=warmup)
        self.manifest = self.half.manifest
        self.edge_address: tuple[str, int] | None = None
        self.connect_timeout = 10.0
        self.io_timeout: float | None = None
        self.last_timing: dict[str, float] = {}
        self._sock: socket.socket | None = None
        self._next_id = 1
        local = {s.name for s in self.manifest.inputs} | set(self.half.output_names)
        missing = [n for n in self.manifest.send if n not in local]
        if missing:
            raise RuntimeFailure(
                f"{bundle_dir}: manifest sends {missing}, which are neither model inputs nor head outputs; "
                "rebuild the bundle with cogentc"
            )
        if not self.needs_edge:
            absent = [s.name for s in self.manifest.model_outputs if s.name not in local]
            if absent:
                raise RuntimeFailure(
                    f"{bundle_dir}: model outputs {absent} are not produced by the head and nothing is sent "
                    "to the edge; rebuild the bundle with cogentc"
                )

    @property
    def needs_edge(self) -> bool:
        """True when the plan sends tensors to the edge (``send`` is not empty)."""
        return bool(self.manifest.send)

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self, host: str, port: int, timeout: float = 10.0, io_timeout: float | None = 300.0) -> None:
        """Open the TCP connection to the edge server at ``host:port``.

        ``timeout`` bounds the connection attempt, ``io_timeout`` each reply
        (``None``: wait forever).  Raises ``RuntimeFailure`` with the reason
        (refused, unreachable, timed out) when the edge cannot be reached.
        """
        self.close()
        self.edge_address = (host, port)
        self.connect_timeout = timeout
        self.io_timeout = io_timeout
        self._open()

    def _open(self) -> None:
        assert self.edge_address is not None
        host, port = self.edge_address
        try:
            sock = socket.create_connection((host, port), timeout=self.connect_timeout)
        except ConnectionRefusedError as e:
            raise RuntimeFailure(
                f"cannot reach edge at {host}:{port}: connection refused; "
                f"start `cogent-edge serve EDGE_BUNDLE --host {host} --port {port}` first"
            ) from e
        except TimeoutError as e:
            raise RuntimeFailure(
                f"cannot reach edge at {host}:{port}: timed out; check the address and the network"
            ) from e
        except OSError as e:
            raise RuntimeFailure(f"cannot reach edge at {host}:{port}: {e.strerror or e}") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.io_timeout)
        self._sock = sock
        log.info("connected to edge at %s:%d", host, port)

    def close(self) -> None:
        """Close the connection to the edge, if open (the address is kept for a later ``infer``)."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def prepare_inputs(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Order ``inputs`` (a dict by name, or a list in manifest order) and check them against the manifest.

        Raises ``RuntimeFailure`` for a missing or unknown name or a wrong count, shape or dtype.
        """
        specs = self.manifest.inputs
        if isinstance(inputs, Mapping):
            names = [s.name for s in specs]
            unknown = sorted(set(inputs) - set(names))
            missing = [n for n in names if n not in inputs]
            if unknown or missing:
                raise RuntimeFailure(
                    f"{self.manifest.model}: inputs given {sorted(inputs)}, expected {names}"
                    + (f" (missing {missing})" if missing else "")
                    + (f" (unknown {unknown})" if unknown else "")
                )
            ordered = [np.asarray(inputs[n]) for n in names]
        else:
            ordered = [np.asarray(a) for a in inputs]
        self.half.check_inputs(ordered)
        return ordered

    def infer(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``inputs``; return its outputs by name, in the manifest's order.

        Connects to the edge again if an earlier failure closed the connection.
        Raises ``RuntimeFailure`` for bad inputs, an unreachable or failing edge
        (its ERROR message is included), or a reply without the expected tensors.
        """
        t0 = time.perf_counter()
        arrays = self.prepare_inputs(inputs)
        env: dict[str, np.ndarray] = {s.name: a for s, a in zip(self.manifest.inputs, arrays)}
        env.update(zip(self.half.output_names, self.half.run(arrays)))
        t1 = time.perf_counter()
        if self.needs_edge:
            env.update(self._exchange([(n, self._encode(n, env[n])) for n in self.manifest.send]))
        t2 = time.perf_counter()
        result: dict[str, np.ndarray] = {}
        for spec in self.manifest.model_outputs:
            arr = env.get(spec.name)
            if arr is None:
                raise RuntimeFailure(
                    f"model output {spec.name!r} is neither a head output nor in the edge's reply "
                    f"({sorted(env)}); are device and edge bundles from the same build?"
                )
            if arr.shape != spec.shape or arr.dtype.name != spec.dtype:
                raise RuntimeFailure(
                    f"model output {spec.name!r} has shape {list(arr.shape)} {arr.dtype.name}, "
                    f"expected {list(spec.shape)} {spec.dtype}"
                )
            result[spec.name] = arr
        self.last_timing = {
            "head_ms": (t1 - t0) * 1e3,
            "edge_ms": (t2 - t1) * 1e3,
            "total_ms": (time.perf_counter() - t0) * 1e3,
        }
        return result

    def _encode(self, name: str, arr: np.ndarray) -> np.ndarray:
        """``arr`` in the wire dtype the plan chose for it; in its own dtype when the narrow one would overflow."""
        wire = self.manifest.encodings.get(name)
        if wire is None:
            return arr
        with np.errstate(over="ignore"):  # an overflow is handled below, not warned about
            narrow = arr.astype(wire)
        if not np.isfinite(narrow).all() and np.isfinite(arr).all():
            log.warning("%s: values beyond %s's range; sent as %s this time", name, wire, arr.dtype.name)
            return arr
        return narrow

    def _exchange(self, tensors: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
        """Send one REQUEST to the edge and return the RESPONSE's tensors."""
        if self.edge_address is None:
            raise RuntimeFailure(
                f"{self.manifest.model}: this plan sends {list(self.manifest.send)} to an edge server; "
                "connect to one first (cogent-device run ... --edge HOST:PORT)"
            )
        if self._sock is None:
            self._open()
        assert self._sock is not None
        host, port = self.edge_address
        request_id = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        try:
            protocol.send_frame(self._sock, protocol.encode(protocol.REQUEST, request_id, tensors))
            frame = protocol.recv_frame(self._sock)
        except TimeoutError as e:
            self.close()
            raise RuntimeFailure(f"edge at {host}:{port} did not answer within {self.io_timeout} s") from e
        except ProtocolError as e:
            self.close()
            raise ProtocolError(f"edge at {host}:{port} sent a malformed reply: {e}") from e
        except OSError as e:
            self.close()
            raise RuntimeFailure(
                f"lost the connection to edge at {host}:{port} ({e.strerror or e}); is cogent-edge still running?"
            ) from e
        if frame is None:
            self.close()
            raise RuntimeFailure(f"edge at {host}:{port} closed the connection; is cogent-edge still running?")
        if frame.kind == protocol.ERROR:
            if frame.request_id != request_id:
                self.close()  # an error about the stream itself: the edge has hung up
            raise RuntimeFailure(f"edge at {host}:{port} refused the request: {frame.message}")
        if frame.kind != protocol.RESPONSE or frame.request_id != request_id:
            self.close()
            raise ProtocolError(
                f"edge at {host}:{port} answered request {request_id} with kind {frame.kind} "
                f"for request {frame.request_id}"
            )
        return frame.tensors


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cogent-device",
        description="Run the device half (head) of a Cogent bundle, sending the cut tensors to an edge server.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser(
        "run",
        help="run one inference (or time several)",
        description="Run one inference on .npy inputs and write the model outputs as .npy files.",
    )
    r.add_argument("bundle", metavar="BUNDLE_DIR", help="the bundle's device/ folder (holds manifest.json)")
    r.add_argument(
        "--edge",
        metavar="HOST:PORT",
        help=f"the edge server (port defaults to {protocol.DEFAULT_PORT}); not needed when the plan runs on the device only",
    )
    r.add_argument(
        "--input", action="append", default=[], metavar="X.npy", help="a model input, once per input in manifest order"
    )
    r.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="Y.npy",
        help="where to write a model output, once per output in manifest order (omit to only print shapes)",
    )
    r.add_argument(
        "--repeat", type=int, default=0, metavar="N", help="then time N more inferences and print the median"
    )
    r.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    r.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="connect timeout in seconds (default: %(default)s)"
    )
    add_bundle_options(r)
    return parser


class _UsageError(Exception):
    """A problem with the command line, inputs or bundle (exit status 2)."""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _load_inputs(paths: Sequence[str]) -> list[np.ndarray]:
    arrays = []
    for p in paths:
        try:
            arrays.append(np.load(p, allow_pickle=False))
        except FileNotFoundError as e:
            raise _UsageError(f"input {p}: no such file") from e
        except (OSError, ValueError) as e:
            raise _UsageError(f"input {p}: not a .npy array file ({_one_line(e)})") from e
    return arrays


def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.repeat < 0:
        raise _UsageError(f"--repeat {args.repeat}: expected a count >= 0")
    try:
        client = DeviceClient(args.bundle, verify=not args.no_verify)
    except RuntimeFailure as e:
        raise _UsageError(str(e)) from e
    m = client.manifest
    if args.output and len(args.output) != len(m.model_outputs):
        names = [s.name for s in m.model_outputs]
        raise _UsageError(f"{len(args.output)} --output given, the model has {len(names)} outputs {names}")
    try:
        inputs = client.prepare_inputs(_load_inputs(args.input))
    except RuntimeFailure as e:
        raise _UsageError(f"{_one_line(e)}; pass one --input FILE.npy per model input, in manifest order") from e
    edge: tuple[str, int] | None = None
    if client.needs_edge:
        if not args.edge:
            raise _UsageError(
                f"this plan sends {list(m.send)} to an edge server; pass --edge HOST:PORT "
                "(start one with `cogent-edge serve EDGE_BUNDLE`)"
            )
        try:
            edge = parse_address(args.edge)
        except ValueError as e:
            raise _UsageError(f"--edge {e}") from e
    elif args.edge:
        log.info("plan runs on the device only; --edge %s is not used", args.edge)
    with client:
        if edge is not None:
            client.connect(*edge, timeout=args.timeout)
        outputs = client.infer(inputs)
        runs: list[dict[str, float]] = []
        for _ in range(args.repeat):
            client.infer(inputs)
            runs.append(dict(client.last_timing))
    report: dict[str, Any] = {
        "model": m.model,
        "edge": None if edge is None else f"{edge[0]}:{edge[1]}",
        "outputs": [],
    }
    for i, (name, arr) in enumerate(outputs.items()):
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape), "dtype": arr.dtype.name}
        if args.output:
            np.save(args.output[i], arr, allow_pickle=False)
            entry["file"] = args.output[i]
        report["outputs"].append(entry)
    if runs:
        report["repeat"] = len(runs)
        report["median_ms"] = {k: statistics.median(r[k] for r in runs) for k in ("total_ms", "head_ms", "edge_ms")}
        report["runs_ms"] = [r["total_ms"] for r in runs]
    return report


def _print_text(report: dict[str, Any]) -> None:
    for o in report["outputs"]:
        where = f" -> {o['file']}" if "file" in o else ""
        print(f"cogent-device: {o['name']} {o['shape']} {o['dtype']}{where}")
    if "median_ms" in report:
        med = report["median_ms"]
        print(
            f"cogent-device: median {med['total_ms']:.3f} ms over {report['repeat']} runs "
            f"(head {med['head_ms']:.3f} ms, edge round trip {med['edge_ms']:.3f} ms)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cogent-device``; returns the exit status.

    0 ok; 1 runtime or network failure (edge unreachable, edge error);
    2 usage, input or bundle problem (including a tampered bundle).
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="cogent-device %(levelname)s %(name)s: %(message)s")
    try:
        report = _run(args)
    except _UsageError as e:
        print(f"cogent-device: error: {_one_line(e)}", file=sys.stderr, flush=True)
        return 2
    except RuntimeFailure as e:
        print(f"cogent-device: error: {_one_line(e)}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:
        print(f"cogent-device: error: {_one_line(e)}", file=sys.stderr, flush=True)
        return 1
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        _print_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
