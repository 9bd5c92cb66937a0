"""A user-space TCP proxy that adds a fixed one-way delay in each direction.

Used by the testbed to add round-trip time where the kernel has no ``netem``.
Each chunk read is forwarded ``delay`` seconds after it arrived, in order, so
the added latency does not cost throughput (as with a long link, not a slow
one).  Run: ``python -m cogent_compiler.testbed.delay --listen H:P --to H:P --rtt-ms 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

__all__ = ["main", "serve"]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while True:
            data = await reader.read(1 << 16)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                return

    async def write() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, asyncio.IncompleteReadError):
        pass


async def serve(listen: tuple[str, int], to: tuple[str, int], one_way_s: float) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*to)
        except OSError:
            w.close()
            return
        await asyncio.gather(_pump(r, uw, one_way_s), _pump(ur, w, one_way_s))
        for x in (w, uw):
            x.close()

    server = await asyncio.start_server(handle, *listen)
    print(f"delay proxy: {listen[0]}:{listen[1]} -> {to[0]}:{to[1]}, +{one_way_s * 1e3:g} ms each way", flush=True)
    async with server:
        await server.serve_forever()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cogent_compiler.testbed.delay", description=__doc__)
    p.add_argument("--listen", required=True, type=_addr)
    p.add_argument("--to", required=True, type=_addr)
    p.add_argument("--rtt-ms", required=True, type=float, help="added round-trip time; half is added each way")
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.listen, args.to, args.rtt_ms / 2e3))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
