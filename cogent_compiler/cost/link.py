"""Measuring the device–edge link with the runtime's own protocol, and the link profile file.

``measure_link(host, port)`` opens one TCP connection to a running
``cogent-edge`` (as ``DeviceClient`` does: ``TCP_NODELAY``, the same
``send_frame``/``recv_frame`` path) and times PROBE frames
(``runtime.protocol``) that the edge answers without running its model:

- *empty* probes (no filler either way) give the round trip;
- *up* probes carry N filler bytes and ask for none back;
- *down* probes carry none and ask for N bytes back.

Each size is probed ``repeats`` times, sizes interleaved so that a burst of
noise does not land on one size.  ``fit_link`` then fits, per direction,
``time = rtt + per_message + bytes * 8 / bandwidth`` robustly: the intercept
is the median empty-probe time, the slope the Theil–Sen estimate (median of
pairwise slopes) over the per-size median times.  ``per_message_s`` is the
edge's own time between reading a probe and replying (median, reported in
each PROBE_REPLY), which takes the same worker-thread hop as a request, and
``rtt_s`` the rest of the empty-probe time: the network round trip plus both
ends' socket path.  Every reply also carries the edge's
load (``EdgeLoad``); the profile keeps the median load factor seen.

A link profile is JSON (``"schema": "cogent-link/1"``)::

    {
      "schema": "cogent-link/1",
      "peer": "10.0.0.2:7461",
      "date": "2026-11-26T15:00:00+00:00",
      "bandwidth_up_bps": 19.3e6, "bandwidth_down_bps": 19.1e6,
      "rtt_s": 0.0004, "per_message_s": 0.00002,
      "edge_load_factor": 1.0,
      "edge_load": {"load_factor": 1.0, "baseline_ms": ..., "recent_ms": ..., "in_flight": 0, "recent": 3, "handled_s": ...},
      "settings": {"sizes": [...], "repeats": 5},
      "samples": [{"direction": "up", "bytes": 65536, "seconds": 0.027}, ...]
    }

``cogentc profile --peer HOST:PORT -o link.json`` writes one;
``cogentc plan/compile --link-profile link.json`` plans with it.  This module
needs only numpy and the runtime's protocol: no torch, no tvm.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogent_compiler.cost.latency import Link
from cogent_compiler.errors import LinkError, LinkFormatError, PeerUnreachableError, ProtocolError
from cogent_compiler.runtime import protocol

__all__ = [
    "DEFAULT_SIZES",
    "LINK_SCHEMA",
    "LinkProfile",
    "LinkSample",
    "fit_link",
    "load_link_profile",
    "measure_link",
    "save_link_profile",
]

log = logging.getLogger(__name__)

LINK_SCHEMA = "cogent-link/1"
#: Filler sizes (bytes) probed each way by default: 1 MiB takes 0.4 s at 20 Mbit/s.
DEFAULT_SIZES: tuple[int, ...] = (16 << 10, 64 << 10, 256 << 10, 1 << 20)
_DIRECTIONS = ("empty", "up", "down")


@dataclass(frozen=True)
class LinkSample:
    """One timed probe: ``direction`` is ``empty``, ``up`` or ``down``; ``bytes`` the filler that crossed."""

    direction: str
    bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "bytes": self.bytes, "seconds": self.seconds}


@dataclass(frozen=True)
class LinkProfile:
    """A measured link (bit/s, s) and the edge's load, with the raw samples they were fitted from."""

    peer: str
    bandwidth_up_bps: float
    bandwidth_down_bps: float
    rtt_s: float
    per_message_s: float
    #: the median load factor the edge reported (1.0 when it reported none: no recent requests or an empty half)
    edge_load_factor: float
    date: str
    #: the last ``EdgeLoad`` the edge reported, as JSON
    edge_load: Mapping[str, Any] = field(default_factory=dict)
    samples: tuple[LinkSample, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)

    def link(self, source: str | None = None) -> Link:
        """The latency model's ``Link`` with this profile's figures."""
        return Link(self.bandwidth_up_bps, self.rtt_s, self.per_message_s, self.bandwidth_down_bps,
                    source=source or f"link profile of {self.peer} ({self.date})")

    def summary(self) -> str:
        """One line: both bandwidths, RTT, per-message overhead and edge load."""
        return (f"up {self.bandwidth_up_bps / 1e6:.2f} Mbit/s, down {self.bandwidth_down_bps / 1e6:.2f} Mbit/s, "
                f"RTT {self.rtt_s * 1e3:.3f} ms, per message {self.per_message_s * 1e3:.3f} ms, edge load {self.edge_load_factor:.2f}x")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": LINK_SCHEMA, "peer": self.peer, "date": self.date,
            "bandwidth_up_bps": self.bandwidth_up_bps, "bandwidth_down_bps": self.bandwidth_down_bps,
            "rtt_s": self.rtt_s, "per_message_s": self.per_message_s, "edge_load_factor": self.edge_load_factor,
            "edge_load": dict(self.edge_load), "settings": dict(self.settings), "samples": [s.to_json() for s in self.samples],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LinkProfile:
        """Raises ``KeyError``/``TypeError``/``ValueError`` for a malformed document (``load_link_profile`` words them)."""
        samples = tuple(LinkSample(str(s["direction"]), int(s["bytes"]), float(s["seconds"])) for s in d.get("samples", ()))
        profile = cls(
            peer=str(d["peer"]), bandwidth_up_bps=float(d["bandwidth_up_bps"]), bandwidth_down_bps=float(d["bandwidth_down_bps"]),
            rtt_s=float(d["rtt_s"]), per_message_s=float(d["per_message_s"]), edge_load_factor=float(d["edge_load_factor"]),
            date=str(d["date"]), edge_load=dict(d.get("edge_load", {})), samples=samples, settings=dict(d.get("settings", {})),
        )
        if not (profile.bandwidth_up_bps > 0 and profile.bandwidth_down_bps > 0 and profile.rtt_s >= 0
                and profile.per_message_s >= 0 and profile.edge_load_factor > 0):
            raise ValueError("bandwidths and the edge load factor must be positive, RTT and per-message overhead non-negative")
        return profile


def save_link_profile(profile: LinkProfile, path: str | Path) -> None:
    """Write ``profile`` as JSON at ``path`` (atomically: a temporary file renamed over it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(profile.to_json(), indent=2) + "\n")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LinkError(f"{path}: cannot write the link profile ({e.strerror or e}); choose a writable -o path") from e


def load_link_profile(path: str | Path) -> LinkProfile:
    """Read a link profile; ``LinkFormatError`` (one line, naming the fix) for anything else."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise LinkFormatError(f"{path}: no such link profile; measure one with `cogentc profile --peer HOST:PORT -o {path}`") from e
    except OSError as e:
        raise LinkFormatError(f"{path}: cannot read the link profile ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LinkFormatError(f"{path}: not JSON ({e}); is it a link profile written by `cogentc profile --peer`?") from e
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema != LINK_SCHEMA:
        if isinstance(schema, str) and schema.startswith("cogent-link/"):
            raise LinkFormatError(f"{path}: link profile schema {schema!r} is not supported by this cogentc (it reads {LINK_SCHEMA!r}); "
                                  "re-measure with `cogentc profile --peer HOST:PORT`")
        raise LinkFormatError(f"{path}: not a link profile (schema {schema!r}, expected {LINK_SCHEMA!r}); "
                              "write one with `cogentc profile --peer HOST:PORT -o FILE` (a compute profile goes to --device-profile/--edge-profile)")
    try:
        return LinkProfile.from_json(doc)
    except (KeyError, TypeError, ValueError) as e:
        raise LinkFormatError(f"{path}: malformed link profile ({type(e).__name__}: {e}); re-measure with `cogentc profile --peer HOST:PORT`") from e


def _theil_sen_slope(points: Sequence[tuple[float, float]]) -> float:
    """Median of the slopes between every pair of points with different x."""
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1:] if x2 != x1]
    return statistics.median(slopes) if slopes else float("nan")


def fit_link(samples: Iterable[LinkSample], per_message_s: float = 0.0) -> tuple[float, float, float, float]:
    """Fit ``(bandwidth_up_bps, bandwidth_down_bps, rtt_s, per_message_s)`` to probe samples.

    Preconditions: there are ``empty`` samples and ``up`` and ``down``
    samples of at least one positive size each.  ``per_message_s`` (the
    edge's handling time) is taken out of the empty-probe median to leave
    ``rtt_s`` (at least 0).  Raises ``LinkError`` when a direction's time does
    not grow with size (the sizes are too small for the link to show).
    """
    by: dict[tuple[str, int], list[float]] = {}
    for s in samples:
        if s.direction not in _DIRECTIONS:
            raise LinkError(f"link sample direction {s.direction!r} is not one of {', '.join(_DIRECTIONS)}")
        by.setdefault((s.direction, 0 if s.direction == "empty" else s.bytes), []).append(s.seconds)
    empty = by.get(("empty", 0))
    if not empty:
        raise LinkError("no empty probe was timed: the round trip cannot be fitted")
    base = statistics.median(empty)
    bandwidth: dict[str, float] = {}
    for direction in ("up", "down"):
        points = [(0.0, base)] + sorted((float(n), statistics.median(t)) for (d, n), t in by.items() if d == direction and n > 0)
        if len(points) < 2:
            raise LinkError(f"no {direction} probe with a payload was timed: the {direction}link bandwidth cannot be fitted")
        slope = _theil_sen_slope(points)  # seconds per byte
        if not slope > 0:
            largest = int(points[-1][0])
            raise LinkError(f"{direction}link: a {largest}-byte probe took no longer than an empty one ({points[-1][1] * 1e3:.3f} vs "
                            f"{base * 1e3:.3f} ms), so the bandwidth cannot be measured; probe larger sizes")
        bandwidth[direction] = 8.0 / slope
    per_message = min(max(per_message_s, 0.0), base)
    return bandwidth["up"], bandwidth["down"], base - per_message, per_message


class _Prober:
    """One connection to the edge that times probes."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.peer = f"{host}:{port}"
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as e:  # refused, unresolvable, timed out
            raise PeerUnreachableError(
                f"cannot reach the edge at {self.peer} ({e.strerror or e}); start it there with "
                f"`cogent-edge serve EDGE_BUNDLE --host 0.0.0.0 --port {port}` and check the address and firewall"
            ) from e
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout_s)
        self.timeout_s = timeout_s
        self.loads: list[protocol.EdgeLoad] = []
        self._next_id = 1

    def close(self) -> None:
        self.sock.close()

    def probe(self, up: int, down: int) -> float:
        """Send ``up`` filler bytes, receive ``down``; return the seconds from before sending to the whole reply."""
        request_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
        parts = protocol.encode_probe(request_id, up, down)
        try:
            start = time.perf_counter()
            protocol.send_frame(self.sock, parts)
            frame = protocol.recv_frame(self.sock)
            seconds = time.perf_counter() - start
        except TimeoutError as e:
            raise LinkError(f"the edge at {self.peer} did not answer a probe of {up} + {down} bytes within {self.timeout_s:g} s; "
                            "the link is slower than that: probe smaller sizes (--sizes) or allow more time (timeout_s)") from e
        except ProtocolError as e:
            raise LinkError(f"{self.peer} answered a probe with a malformed frame ({e}); is a Cogent edge listening there?") from e
        except OSError as e:
            raise PeerUnreachableError(f"the connection to the edge at {self.peer} failed during a probe ({e.strerror or e}); "
                                       "check that cogent-edge is still running") from e
        if frame is None:
            raise LinkError(f"the edge at {self.peer} closed the connection on a probe; is it a cogent-edge older than probes? "
                            "upgrade it to this cogentc release")
        if frame.kind == protocol.ERROR:
            old = "unknown frame kind" in (frame.message or "")
            hint = "this cogent-edge is older than probes: upgrade it to this cogentc release" if old else "see the edge's log"
            raise LinkError(f"the edge at {self.peer} refused a probe: {frame.message}; {hint}")
        if frame.kind != protocol.PROBE_REPLY or frame.request_id != request_id or frame.filler_bytes != down:
            raise LinkError(f"the edge at {self.peer} answered probe {request_id} with a {frame.kind}-kind frame for request "
                            f"{frame.request_id} carrying {frame.filler_bytes} bytes (expected a PROBE_REPLY of {down} bytes)")
        assert frame.load is not None
        self.loads.append(frame.load)
        return seconds


def measure_link(
    host: str,
    port: int = protocol.DEFAULT_PORT,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    repeats: int = 5,
    timeout_s: float = 30.0,
    max_probe_s: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> LinkProfile:
    """Measure the link to the edge at ``host:port`` with probes; return the fitted ``LinkProfile``.

    Every size in ``sizes`` (bytes, each in ``1..MAX_PROBE_BYTES``) is sent up
    and asked down ``repeats`` times, and ``2 * repeats`` empty probes time the
    round trip.  Once a probe takes longer than ``max_probe_s`` (a slow
    link), the sizes larger than it are dropped: they would only take longer.
    Raises ``PeerUnreachableError`` when no connection can be made and
    ``LinkError`` for an edge that does not answer probes or a fit that fails.
    """
    sizes = sorted(set(int(n) for n in sizes))
    if not sizes or sizes[0] < 1 or sizes[-1] > protocol.MAX_PROBE_BYTES:
        raise LinkError(f"probe sizes {sizes} must be between 1 and {protocol.MAX_PROBE_BYTES} bytes")
    if repeats < 1:
        raise LinkError(f"repeats must be at least 1, got {repeats}")
    say = progress or (lambda msg: log.info("%s", msg))
    prober = _Prober(host, port, timeout_s)
    samples: list[LinkSample] = []
    try:
        prober.probe(0, 0)  # warm-up: connection set up, edge code paths hot
        say(f"probing {prober.peer}: {len(sizes)} sizes up to {sizes[-1]} bytes each way, {repeats} repeats")
        for _ in range(2 * repeats):
            samples.append(LinkSample("empty", 0, prober.probe(0, 0)))
        active = list(sizes)
        for r in range(repeats):
            for n in list(active):
                if n not in active:  # dropped earlier in this round
                    continue
                up = prober.probe(n, 0)
                down = prober.probe(0, n)
                samples += [LinkSample("up", n, up), LinkSample("down", n, down)]
                dropped = [m for m in active if m > n]
                if max(up, down) > max_probe_s and dropped:
                    say(f"a {n}-byte probe took {max(up, down):.2f} s: not probing {dropped} bytes")
                    active = [m for m in active if m <= n]
            say(f"round {r + 1}/{repeats} done")
    finally:
        prober.close()
    handled = statistics.median(load.handled_s for load in prober.loads)
    up_bps, down_bps, rtt, per_message = fit_link(samples, handled)
    factors = [load.load_factor for load in prober.loads if load.load_factor is not None]
    profile = LinkProfile(
        peer=prober.peer, bandwidth_up_bps=up_bps, bandwidth_down_bps=down_bps, rtt_s=rtt, per_message_s=per_message,
        edge_load_factor=statistics.median(factors) if factors else 1.0,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        edge_load=prober.loads[-1].to_json(), samples=tuple(samples),
        settings={"sizes": sizes, "repeats": repeats, "max_probe_s": max_probe_s},
    )
    say(profile.summary())
    return profile
