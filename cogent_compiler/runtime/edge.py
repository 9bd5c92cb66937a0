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
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cogent_compiler.errors import ProtocolError, RuntimeFailure
from cogent_compiler.runtime import protocol
from cogent_compiler.runtime.cliutil import add_bundle_options
from cogent_compiler.runtime.executor import Half

__all__ = ["DEFAULT_PORT", "EdgeServer", "main", "serve", "serve_half"]

# Named explicitly: under `python -m` this module is `__main__`.
log = logging.getLogger("cogent_compiler.runtime.edge")

DEFAULT_PORT = protocol.DEFAULT_PORT
_READ_LIMIT = 4 << 20


class EdgeServer:
    """Serves one loaded edge half.

    Use ``start`` then ``wait_closed`` (or ``serve`` which does both); ``close``
    stops listening and ends open connections.
    """

    def __init__(self, half: Half) -> None:
        self.half = half
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self.requests_served = 0

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); only valid after ``start``."""
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and start accepting; return the bound (host, port) (the real port when ``port`` is 0)."""
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
            if arr.shape != spec.shape or arr.dtype.name != spec.dtype:
                raise RuntimeFailure(
                    f"tensor {name!r} has shape {list(arr.shape)} {arr.dtype.name}, "
                    f"expected {list(spec.shape)} {spec.dtype}"
                )

    async def _answer(self, frame: protocol.Frame) -> list[protocol.Buffer]:
        try:
            self._check_request(frame)
            start = time.perf_counter()
            outputs: list[np.ndarray] = await asyncio.to_thread(self.half.run, frame.arrays)
            log.debug("request %d computed in %.3f ms", frame.request_id, (time.perf_counter() - start) * 1e3)
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
