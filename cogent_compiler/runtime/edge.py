"""The edge server: runs a bundle's tail for many devices over TCP.

``cogent-edge serve EDGE_BUNDLE --host 0.0.0.0 --port 7461`` loads the edge
half (refusing a tampered bundle), prints one ready line
(``cogent-edge: serving MODEL on HOST:PORT``) and answers REQUEST frames with
RESPONSE frames carrying the tail's outputs, named as in the manifest.

Each connection is its own task and answers its requests in order; the
computation runs in a worker thread so that other connections keep reading
and writing meanwhile (``Half.run`` serialises the VM with a lock).  A request
with the wrong tensors gets an ERROR frame and the connection stays open; a
malformed frame gets an ERROR frame and the connection is closed, because the
stream can no longer be trusted.  SIGTERM and SIGINT stop the server cleanly.

A PROBE frame (``cogentc profile --peer``) is answered with a PROBE_REPLY
of the size it asks for, without running the model but through the same
worker-thread hop as a request (its time is the per-message overhead); the reply
reports the edge's load from a ``LoadMeter``: the half's service time over
the recent requests against its idle pace (the median of a few runs on zeros
before the server listens, lowered to any faster steady pace seen later).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from cogent_compiler.errors import ProtocolError, RuntimeFailure
from cogent_compiler.runtime import protocol
from cogent_compiler.runtime.cliutil import add_bundle_options
from cogent_compiler.runtime.executor import Half

__all__ = ["DEFAULT_PORT", "EdgeServer", "LoadMeter", "main", "serve", "serve_half"]

# Named explicitly: under `python -m` this module is `__main__`.
log = logging.getLogger("cogent_compiler.runtime.edge")

DEFAULT_PORT = protocol.DEFAULT_PORT
_READ_LIMIT = 4 << 20


class LoadMeter:
    """The edge half's service times: an idle baseline and a window of recent requests.

    A request's *service time* runs from handing its decoded inputs to a
    worker thread to having its outputs back in the event loop, so it includes
    the wait for the half's lock behind other requests, for a loop busy with
    other connections, and any slowdown from other work on the machine.
    ``load_factor`` is the median service time of the last ``window`` requests
    that finished within ``max_age_s`` seconds, divided by ``baseline_ms``:
    1.0 is idle speed, 2.0 twice as slow.  It is ``None`` while either is
    unknown.

    The baseline starts as the median of idle runs (``set_baseline``) and
    falls to the median of any full window of requests that was faster
    (a full window: ``min_samples`` requests or more), because the first runs
    after loading are often slower than the edge's steady idle pace.  So the
    baseline is the edge's best sustained pace seen, and a load factor well
    below 1 does not last.  Thread-safe; ``clock`` (seconds) is a parameter so
    that tests can drive it.
    """

    def __init__(self, *, window: int = 32, max_age_s: float = 30.0, min_samples: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window < 1 or max_age_s <= 0 or min_samples < 1:
            raise ValueError(f"LoadMeter needs window >= 1, max_age_s > 0 and min_samples >= 1, got {window}, {max_age_s}, {min_samples}")
        self.max_age_s = max_age_s
        self.min_samples = min(min_samples, window)
        self.baseline_ms: float | None = None
        self.in_flight = 0
        self._clock = clock
        self._recent: deque[tuple[float, float]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def set_baseline(self, samples_ms: Iterable[float]) -> None:
        """Take the median of ``samples_ms`` (idle runs) as the baseline; no samples leave it unknown."""
        samples = list(samples_ms)
        with self._lock:
            self.baseline_ms = statistics.median(samples) if samples else None

    def started(self) -> None:
        """A request began computing."""
        with self._lock:
            self.in_flight += 1

    def finished(self, service_ms: float | None) -> None:
        """A request ended; ``service_ms`` is its service time (``None`` when it failed: not recorded)."""
        with self._lock:
            self.in_flight -= 1
            if service_ms is None:
                return
            self._recent.append((self._clock(), service_ms))
            if len(self._recent) >= self.min_samples:
                pace = statistics.median(ms for _, ms in self._recent)
                if self.baseline_ms is None or pace < self.baseline_ms:
                    self.baseline_ms = pace

    def snapshot(self, handled_s: float = 0.0) -> protocol.EdgeLoad:
        """The current load as a probe reply carries it."""
        with self._lock:
            now = self._clock()
            recent = [ms for t, ms in self._recent if now - t <= self.max_age_s]
            recent_ms = statistics.median(recent) if recent else None
            base = self.baseline_ms
            factor = recent_ms / base if recent_ms is not None and base else None
            return protocol.EdgeLoad(factor, base, recent_ms, self.in_flight, len(recent), handled_s)


def _nothing() -> None:
    return None


class EdgeServer:
    """Serves one loaded edge half.

    Use ``start`` then ``wait_closed`` (or ``serve`` which does both); ``close``
    stops listening and ends open connections.  Before listening, ``start``
    runs the half ``baseline_runs`` times on zeros to set the idle baseline of
    ``load`` (0 runs: the load factor stays unknown).
    """

    def __init__(self, half: Half, *, baseline_runs: int = 3, load: LoadMeter | None = None) -> None:
        self.half = half
        self.baseline_runs = baseline_runs
        self.load = load or LoadMeter()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self.requests_served = 0
        self.probes_answered = 0

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); only valid after ``start``."""
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and start accepting; return the bound (host, port) (the real port when ``port`` is 0)."""
        if self.baseline_runs > 0 and not self.half.is_empty:
            zeros = [np.zeros(spec.shape, dtype=spec.dtype) for spec in self.half.input_specs]
            runs = [(await self._serve_timed(zeros))[1] for _ in range(self.baseline_runs)]
            self.load.set_baseline(runs)
            log.info("idle service time %.3f ms (median of %d runs)", self.load.baseline_ms, len(runs))
        # A larger read buffer than the 64 KiB default: requests carry megabytes of activations.
        self._server = await asyncio.start_server(self._on_connect, host, port, limit=_READ_LIMIT)
        return self.address

    async def wait_closed(self) -> None:
        """Return once ``close`` has been called and the connections have ended."""
        await self._closed.wait()

    async def close(self) -> None:
        """Stop listening, end every connection (a computation in flight finishes in its thread)."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Since Python 3.12 wait_closed also waits for the connections, so end them first.
        if self._server is not None:
            await self._server.wait_closed()
        self._closed.set()

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        log.info("connection from %s", peer)
        try:
            while True:
                try:
                    frame = await protocol.read_frame(reader)
                except ProtocolError as e:
                    log.warning("closing connection from %s: %s", peer, e)
                    await protocol.write_frame(writer, protocol.encode_error(0, f"malformed frame: {e}"))
                    return
                if frame is None:
                    return
                if frame.kind == protocol.PROBE:
                    await protocol.write_frame(writer, await self._answer_probe(frame))
                    continue
                await protocol.write_frame(writer, await self._answer(frame))
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            log.info("connection from %s lost: %s", peer, e)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass
            log.info("connection from %s closed", peer)

    def _check_request(self, frame: protocol.Frame) -> None:
        if frame.kind != protocol.REQUEST:
            raise RuntimeFailure(f"expected a REQUEST frame, got kind {frame.kind}")
        specs = self.half.input_specs
        if len(frame.tensors) != len(specs):
            raise RuntimeFailure(
                f"request carries {len(frame.tensors)} tensors {frame.names}, the edge expects {len(specs)} "
                f"{[s.name for s in specs]}; are device and edge bundles from the same build?"
            )
        for spec, (name, arr) in zip(specs, frame.tensors):
            if name != spec.name:
                raise RuntimeFailure(
                    f"request tensor {name!r} where the edge expects {spec.name!r}; "
                    "are device and edge bundles from the same build?"
                )
            wire_ok = arr.dtype.name == self.half.manifest.encodings.get(name)
            if arr.shape != spec.shape or (arr.dtype.name != spec.dtype and not wire_ok):
                raise RuntimeFailure(
                    f"tensor {name!r} has shape {list(arr.shape)} {arr.dtype.name}, "
                    f"expected {list(spec.shape)} {spec.dtype}"
                )

    async def _serve_timed(self, inputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """Run the half in a worker thread; return its outputs and the service time in ms.

        Timed from the event loop, so the service time includes the thread hop,
        the wait for the half's lock and the wait for a loop busy with other
        connections: all the edge adds to a request besides the network.
        """
        start = time.perf_counter()
        outputs: list[np.ndarray] = await asyncio.to_thread(self.half.run, inputs)
        return outputs, (time.perf_counter() - start) * 1e3

    async def _answer_probe(self, frame: protocol.Frame) -> list[protocol.Buffer]:
        received = time.perf_counter()
        # The same worker-thread hop a request takes (without the model): handled_s is then the
        # per-message dispatch cost every request pays on the edge besides its compute.
        await asyncio.to_thread(_nothing)
        self.probes_answered += 1
        try:
            load = self.load.snapshot(handled_s=time.perf_counter() - received)
            return protocol.encode_probe_reply(frame.request_id, load, frame.reply_bytes)
        except ProtocolError as e:  # decode_payload already bounds reply_bytes; this is a bug, not the peer's fault
            log.exception("probe %d failed", frame.request_id)
            return protocol.encode_error(frame.request_id, f"internal edge error: {e}")

    async def _answer(self, frame: protocol.Frame) -> list[protocol.Buffer]:
        try:
            self._check_request(frame)
            self.load.started()
            service_ms: float | None = None
            try:
                inputs = [a if a.dtype.name == spec.dtype else a.astype(spec.dtype)  # decode a narrow wire dtype
                          for spec, a in zip(self.half.input_specs, frame.arrays)]
                outputs, service_ms = await self._serve_timed(inputs)
            finally:
                self.load.finished(service_ms)
            log.debug("request %d computed in %.3f ms", frame.request_id, service_ms)
            self.requests_served += 1
            return protocol.encode(protocol.RESPONSE, frame.request_id, list(zip(self.half.output_names, outputs)))
        except RuntimeFailure as e:
            log.warning("request %d refused: %s", frame.request_id, e)
            return protocol.encode_error(frame.request_id, str(e))
        except Exception as e:  # a bug must cost one request, not the server
            log.exception("request %d failed", frame.request_id)
            return protocol.encode_error(frame.request_id, f"internal edge error: {type(e).__name__}: {e}")


async def serve(
    bundle_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    ready: Callable[[str, int], None] | None = None,
    *,
    verify: bool = True,
    stop: asyncio.Event | None = None,
) -> None:
    """Load the edge half in ``bundle_dir`` and serve it until ``stop`` is set (or the task is cancelled).

    ``ready(host, port)`` is called once the socket listens (with the real port
    when ``port`` is 0).  Raises ``RuntimeFailure`` (``TamperedBundleError``
    included) before listening when the bundle cannot be loaded, and
    ``OSError`` when the address cannot be bound.
    """
    half = Half.load(bundle_dir, role="edge", verify=verify)
    await serve_half(half, host, port, ready, stop=stop)


async def serve_half(
    half: Half,
    host: str,
    port: int,
    ready: Callable[[str, int], None] | None = None,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve an already loaded edge ``half``; see ``serve``."""
    if half.is_empty:
        log.warning("the edge half of %s is empty: this plan runs entirely on the device", half.manifest.model)
    server = EdgeServer(half)
    bound = await server.start(host, port)
    log.info("listening on %s:%d", *bound)
    if ready is not None:
        ready(*bound)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await server.close()
        log.info("stopped after %d requests", server.requests_served)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cogent-edge",
        description="Serve the edge half (tail) of a Cogent bundle to device clients over TCP.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser(
        "serve", help="load an edge bundle and serve it", description="Load an edge bundle and serve it."
    )
    s.add_argument("bundle", metavar="BUNDLE_DIR", help="the bundle's edge/ folder (holds manifest.json)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for all)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port, 0 picks a free one (default: %(default)s)")
    add_bundle_options(s)
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cogent-edge``; returns the exit status (0 ok, 1 runtime failure, 2 usage or bundle problem)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="cogent-edge %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        half = Half.load(args.bundle, role="edge", verify=not args.no_verify)

        def ready(host: str, port: int) -> None:
            print(f"cogent-edge: serving {half.manifest.model} on {host}:{port}", flush=True)

        await serve_half(half, args.host, args.port, ready, stop=stop)

    try:
        asyncio.run(run())
    except RuntimeFailure as e:
        print(f"cogent-edge: error: {_one_line(e)}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:
        print(
            f"cogent-edge: error: cannot listen on {args.host}:{args.port}: {e.strerror or e}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
