"""The device–edge wire protocol: length-prefixed binary frames of named tensors.

A frame is a fixed 20-byte header followed by a payload::

    header (network byte order, struct "!4sBBHIQ"):
        magic        4s   b"CGNT"
        version      u8   1
        kind         u8   1 = REQUEST, 2 = RESPONSE, 3 = ERROR, 4 = PROBE, 5 = PROBE_REPLY
        count        u16  number of tensors (0 for ERROR, PROBE and PROBE_REPLY)
        request_id   u32  chosen by the device, echoed by the edge
        payload_len  u64  bytes that follow the header

    payload of REQUEST / RESPONSE, per tensor, in order:
        name_len     u16, then the name in UTF-8
        dtype        u8   a code from DTYPE_CODES
        ndim         u8   at most MAX_NDIM
        dims         u32 × ndim
        padding      zero bytes up to the next multiple of 8 (offset within the payload)
        data         the C-contiguous little-endian element bytes (itemsize × prod(dims))

    payload of ERROR: the message in UTF-8.

    payload of PROBE (struct "!Q", then filler):
        reply_len    u64  filler bytes the edge must send back, at most MAX_PROBE_BYTES
        filler       any bytes, ignored (payload_len - 8 of them, at most MAX_PROBE_BYTES)

    payload of PROBE_REPLY (struct "!dddIIQ", then filler):
        load_factor  f64  recent_ms / baseline_ms; NaN when either is unknown
        baseline_ms  f64  the edge half's idle service time (runs at startup, or a faster steady pace since); NaN if none
        recent_ms    f64  median service time of the recent requests; NaN if none
        in_flight    u32  requests being computed when the probe arrived
        recent       u32  how many requests ``recent_ms`` is the median of
        handled_ns   u64  nanoseconds from reading the probe to replying, a request's dispatch path without the model
        filler       reply_len zero bytes

A PROBE measures the link with this framing and socket path (``cogentc profile
--peer``): the edge answers it without running the model, so the device
can time uploads (a large probe, empty reply) and downloads (an empty
probe, large reply) separately.  The edge's *service time* of a request is the
time from handing its decoded inputs to a worker thread to having the outputs
back, including the wait for the model's lock behind other requests;
``load_factor`` is how much slower that has recently been than when the edge
was idle.

PROBE and PROBE_REPLY were added without changing ``VERSION``: frames of kinds
1–3 are exactly as before, so old devices and new edges interoperate.  An edge
older than probes answers a PROBE with an ERROR frame ("unknown frame kind 4")
and closes the connection; ``cogent_compiler.cost.link`` reports that as an
edge "older than probes" to upgrade.

The padding lets the receiver view the data with ``numpy.frombuffer`` at an
aligned address without copying.  Nothing is pickled; every field is checked on
receipt, and a frame that does not follow this layout raises ``ProtocolError``.

This module needs only numpy: no tvm, no torch.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cogent_compiler.errors import ProtocolError

__all__ = [
    "DEFAULT_PORT",
    "DTYPE_CODES",
    "ERROR",
    "HEADER",
    "MAGIC",
    "MAX_FRAME_BYTES",
    "MAX_NDIM",
    "MAX_PROBE_BYTES",
    "PROBE",
    "PROBE_REPLY",
    "REQUEST",
    "RESPONSE",
    "VERSION",
    "Buffer",
    "EdgeLoad",
    "Frame",
    "decode_payload",
    "encode",
    "encode_error",
    "encode_probe",
    "encode_probe_reply",
    "parse_header",
    "read_frame",
    "recv_frame",
    "send_frame",
    "write_frame",
]

#: The TCP port the edge server listens on unless told otherwise.
DEFAULT_PORT = 7461
MAGIC = b"CGNT"
VERSION = 1
REQUEST = 1
RESPONSE = 2
ERROR = 3
PROBE = 4
PROBE_REPLY = 5
_KIND_NAMES = {REQUEST: "REQUEST", RESPONSE: "RESPONSE", ERROR: "ERROR", PROBE: "PROBE", PROBE_REPLY: "PROBE_REPLY"}
_TENSORLESS = (ERROR, PROBE, PROBE_REPLY)

#: The frame header: magic, version, kind, tensor count, request id, payload length.
HEADER = struct.Struct("!4sBBHIQ")
_PROBE = struct.Struct("!Q")
_PROBE_REPLY = struct.Struct("!dddIIQ")
_TENSOR_HEAD = struct.Struct("!H")
_TENSOR_META = struct.Struct("!BB")
_ALIGN = 8

#: Largest payload accepted (and sent); a corrupt length field must not make a peer allocate gigabytes.
MAX_FRAME_BYTES = 1 << 30
_MAX_ERROR_CHARS = 4096
#: Largest filler a PROBE may carry or ask for: a probe must not make the edge allocate without bound.
MAX_PROBE_BYTES = 64 << 20
#: Largest tensor rank accepted.
MAX_NDIM = 16

#: Wire code of every dtype the protocol carries; data is always little-endian.
DTYPE_CODES: Mapping[str, int] = {
    "float32": 1,
    "float64": 2,
    "float16": 3,
    "int8": 4,
    "int16": 5,
    "int32": 6,
    "int64": 7,
    "uint8": 8,
    "uint16": 9,
    "uint32": 10,
    "uint64": 11,
    "bool": 12,
}
_CODE_DTYPES: dict[int, np.dtype] = {code: np.dtype(name).newbyteorder("<") for name, code in DTYPE_CODES.items()}

#: What ``encode`` returns a list of: header bytes and views of array data.
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class EdgeLoad:
    """How busy the edge is, as a PROBE_REPLY reports it.

    ``load_factor`` is ``recent_ms / baseline_ms`` (``None`` when either is
    unknown: an empty half, or no request in the recent window); 1.0 means the
    edge serves at its idle speed, 2.0 twice as slowly.  ``handled_s`` is the
    edge's own time for the probe, part of the per-message overhead.
    """

    load_factor: float | None = None
    baseline_ms: float | None = None
    recent_ms: float | None = None
    in_flight: int = 0
    recent: int = 0
    handled_s: float = 0.0

    def to_json(self) -> dict[str, float | int | None]:
        return {"load_factor": self.load_factor, "baseline_ms": self.baseline_ms, "recent_ms": self.recent_ms,
                "in_flight": self.in_flight, "recent": self.recent, "handled_s": self.handled_s}


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    ``tensors`` holds ``(name, array)`` pairs in wire order (empty for ERROR
    and probes); ``message`` holds an ERROR frame's text (``None`` otherwise).
    Arrays view the receive buffer; they are read-only when that buffer is
    ``bytes``.  A PROBE sets ``reply_bytes`` (the filler it asks for) and
    ``filler_bytes``; a PROBE_REPLY sets ``load`` and ``filler_bytes``.
    """

    kind: int
    request_id: int
    tensors: list[tuple[str, np.ndarray]] = field(default_factory=list)
    message: str | None = None
    reply_bytes: int = 0
    filler_bytes: int = 0
    load: EdgeLoad | None = None

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.tensors]

    @property
    def arrays(self) -> list[np.ndarray]:
        return [a for _, a in self.tensors]

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(self.tensors)


def _pad(offset: int) -> int:
    return -offset % _ALIGN


def _wire_array(name: str, array: np.ndarray) -> np.ndarray:
    """Return ``array`` as a C-contiguous little-endian array of a wire dtype (a copy only when needed)."""
    arr = np.asarray(array)
    dt = arr.dtype
    if dt.name not in DTYPE_CODES:
        raise ProtocolError(f"tensor {name!r}: dtype {dt} cannot be sent; supported: {', '.join(DTYPE_CODES)}")
    if arr.ndim > MAX_NDIM:
        raise ProtocolError(f"tensor {name!r}: rank {arr.ndim} exceeds the protocol's maximum {MAX_NDIM}")
    if dt.byteorder == ">":
        arr = arr.astype(dt.newbyteorder("<"))
    # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def encode(kind: int, request_id: int, tensors: Iterable[tuple[str, np.ndarray]]) -> list[Buffer]:
    """Encode a REQUEST or RESPONSE frame as a list of buffers to write in order.

    Preconditions: ``kind`` is REQUEST or RESPONSE; ``0 <= request_id < 2**32``;
    every array has a dtype in ``DTYPE_CODES``.  Contiguous little-endian arrays
    are not copied: their data appears as a ``memoryview`` in the result, so
    they must not be modified until the buffers are written.
    """
    if kind not in (REQUEST, RESPONSE):
        raise ProtocolError(
            f"encode: kind {kind} is not REQUEST ({REQUEST}) or RESPONSE ({RESPONSE}); use encode_error"
        )
    items = list(tensors)
    if len(items) > 0xFFFF:
        raise ProtocolError(f"encode: {len(items)} tensors exceed the protocol's maximum of 65535 per frame")
    parts: list[Buffer] = []
    meta = bytearray()
    offset = 0
    for name, array in items:
        arr = _wire_array(name, array)
        raw_name = name.encode("utf-8")
        if len(raw_name) > 0xFFFF:
            raise ProtocolError(f"encode: tensor name of {len(raw_name)} bytes exceeds 65535")
        head = bytearray(_TENSOR_HEAD.pack(len(raw_name)))
        head += raw_name
        head += _TENSOR_META.pack(DTYPE_CODES[arr.dtype.name], arr.ndim)
        for d in arr.shape:
            head += struct.pack("!I", d)
        head += bytes(_pad(offset + len(head)))
        meta += head
        offset += len(head)
        if arr.nbytes:
            parts.append(bytes(meta))
            meta = bytearray()
            # A flat uint8 view of a contiguous array shares its memory: no copy.
            parts.append(arr.reshape(-1).view(np.uint8).data)
            offset += arr.nbytes
    if meta:
        parts.append(bytes(meta))
    if offset > MAX_FRAME_BYTES:
        raise ProtocolError(f"encode: payload of {offset} bytes exceeds MAX_FRAME_BYTES ({MAX_FRAME_BYTES})")
    return [HEADER.pack(MAGIC, VERSION, kind, len(items), request_id, offset), *parts]


def encode_error(request_id: int, message: str) -> list[Buffer]:
    """Encode an ERROR frame carrying ``message`` (UTF-8) for ``request_id``."""
    # Cut the text, not the bytes, so the receiver can always decode it.
    raw = message[:_MAX_ERROR_CHARS].encode("utf-8", errors="replace")
    return [HEADER.pack(MAGIC, VERSION, ERROR, 0, request_id, len(raw)), raw]


_zero_filler = memoryview(b"")


def _filler(n: int) -> memoryview:
    """``n`` zero bytes, as a view of one buffer kept between calls (probes are sent repeatedly)."""
    global _zero_filler
    if len(_zero_filler) < n:
        _zero_filler = memoryview(bytes(n))
    return _zero_filler[:n]


def _check_probe_size(what: str, n: int) -> None:
    if not 0 <= n <= MAX_PROBE_BYTES:
        raise ProtocolError(f"{what} of {n} bytes is outside 0..{MAX_PROBE_BYTES} (MAX_PROBE_BYTES)")


def encode_probe(request_id: int, payload_bytes: int, reply_bytes: int) -> list[Buffer]:
    """Encode a PROBE carrying ``payload_bytes`` of filler that asks for ``reply_bytes`` back.

    Both sizes must lie in ``0..MAX_PROBE_BYTES``.
    """
    _check_probe_size("probe payload", payload_bytes)
    _check_probe_size("probe reply", reply_bytes)
    head = HEADER.pack(MAGIC, VERSION, PROBE, 0, request_id, _PROBE.size + payload_bytes) + _PROBE.pack(reply_bytes)
    return [head, _filler(payload_bytes)] if payload_bytes else [head]


def encode_probe_reply(request_id: int, load: EdgeLoad, reply_bytes: int) -> list[Buffer]:
    """Encode the PROBE_REPLY to a probe that asked for ``reply_bytes``, reporting ``load``."""
    _check_probe_size("probe reply", reply_bytes)
    nan = float("nan")

    def f(x: float | None) -> float:
        return nan if x is None else float(x)

    body = _PROBE_REPLY.pack(f(load.load_factor), f(load.baseline_ms), f(load.recent_ms), load.in_flight & 0xFFFFFFFF,
                             load.recent & 0xFFFFFFFF, max(0, int(load.handled_s * 1e9)))
    head = HEADER.pack(MAGIC, VERSION, PROBE_REPLY, 0, request_id, _PROBE_REPLY.size + reply_bytes) + body
    return [head, _filler(reply_bytes)] if reply_bytes else [head]


def parse_header(header: Buffer, *, max_bytes: int = MAX_FRAME_BYTES) -> tuple[int, int, int, int]:
    """Check a 20-byte frame header; return ``(kind, count, request_id, payload_len)``.

    Raises ``ProtocolError`` for a wrong magic, version or kind, or a payload
    longer than ``max_bytes``.
    """
    if len(header) != HEADER.size:
        raise ProtocolError(f"frame header is {len(header)} bytes, expected {HEADER.size}")
    magic, version, kind, count, request_id, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(
            f"bad magic {bytes(magic)!r}, expected {MAGIC!r}: the peer does not speak the Cogent protocol "
            "(is another service on this port?)"
        )
    if version != VERSION:
        raise ProtocolError(
            f"protocol version {version} is not supported (this runtime speaks version {VERSION}); "
            "deploy device and edge from the same cogentc release"
        )
    if kind not in _KIND_NAMES:
        known = ", ".join(f"{k} ({n})" for k, n in _KIND_NAMES.items())
        raise ProtocolError(f"unknown frame kind {kind}; expected one of {known}")
    if length > max_bytes:
        raise ProtocolError(f"frame payload of {length} bytes exceeds the limit of {max_bytes} bytes")
    if kind in _TENSORLESS and count != 0:
        raise ProtocolError(f"{_KIND_NAMES[kind]} frame declares {count} tensors; it must carry none")
    if kind == PROBE and length > _PROBE.size + MAX_PROBE_BYTES:
        raise ProtocolError(f"PROBE payload of {length} bytes exceeds the probe limit of {MAX_PROBE_BYTES} bytes")
    return kind, count, request_id, length


def decode_payload(kind: int, request_id: int, count: int, payload: Buffer) -> Frame:
    """Decode a payload whose header said ``kind``, ``request_id`` and ``count``.

    Arrays are ``numpy.frombuffer`` views of ``payload`` (no copies).  Raises
    ``ProtocolError`` for an unknown dtype, a too-large rank, a name that is not
    UTF-8, data running past the payload, or bytes left over at the end.
    """
    view = memoryview(payload).cast("B")
    total = len(view)
    if kind == ERROR:
        try:
            return Frame(kind, request_id, [], bytes(view).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ProtocolError(f"ERROR frame message is not valid UTF-8 ({e.reason} at byte {e.start})") from e
    if kind == PROBE:
        if total < _PROBE.size:
            raise ProtocolError(f"truncated PROBE: payload of {total} bytes, expected at least {_PROBE.size}")
        (reply_bytes,) = _PROBE.unpack_from(view, 0)
        _check_probe_size("PROBE asks for a reply", reply_bytes)
        return Frame(kind, request_id, reply_bytes=reply_bytes, filler_bytes=total - _PROBE.size)
    if kind == PROBE_REPLY:
        if total < _PROBE_REPLY.size:
            raise ProtocolError(f"truncated PROBE_REPLY: payload of {total} bytes, expected at least {_PROBE_REPLY.size}")
        factor, baseline, recent_ms, in_flight, recent, handled_ns = _PROBE_REPLY.unpack_from(view, 0)

        def opt(x: float) -> float | None:
            return None if x != x else x  # NaN: unknown

        load = EdgeLoad(opt(factor), opt(baseline), opt(recent_ms), in_flight, recent, handled_ns / 1e9)
        return Frame(kind, request_id, load=load, filler_bytes=total - _PROBE_REPLY.size)
    tensors: list[tuple[str, np.ndarray]] = []
    pos = 0

    def need(n: int, what: str) -> None:
        if pos + n > total:
            raise ProtocolError(
                f"truncated frame: {what} of tensor #{len(tensors)} needs bytes {pos}..{pos + n} "
                f"but the payload has {total}"
            )

    for _ in range(count):
        need(_TENSOR_HEAD.size, "name length")
        (name_len,) = _TENSOR_HEAD.unpack_from(view, pos)
        pos += _TENSOR_HEAD.size
        need(name_len, "name")
        try:
            name = bytes(view[pos : pos + name_len]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"tensor #{len(tensors)}: name is not valid UTF-8") from e
        pos += name_len
        need(_TENSOR_META.size, "dtype/ndim")
        code, ndim = _TENSOR_META.unpack_from(view, pos)
        pos += _TENSOR_META.size
        dtype = _CODE_DTYPES.get(code)
        if dtype is None:
            raise ProtocolError(f"tensor {name!r}: unknown dtype code {code}; known codes: {sorted(_CODE_DTYPES)}")
        if ndim > MAX_NDIM:
            raise ProtocolError(f"tensor {name!r}: rank {ndim} exceeds the protocol's maximum {MAX_NDIM}")
        need(4 * ndim, "dims")
        shape = struct.unpack_from(f"!{ndim}I", view, pos)
        pos += 4 * ndim
        pos += _pad(pos)
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * dtype.itemsize
        need(nbytes, f"data ({shape} {dtype.name})")
        arr = np.frombuffer(view, dtype=dtype, count=numel, offset=pos).reshape(shape)
        pos += nbytes
        tensors.append((name, arr))
    if pos != total:
        raise ProtocolError(f"frame payload has {total - pos} bytes after its {count} tensors; expected none")
    return Frame(kind, request_id, tensors)


async def read_frame(reader: asyncio.StreamReader, *, max_bytes: int = MAX_FRAME_BYTES) -> Frame | None:
    """Read one frame from an asyncio stream.

    Returns ``None`` when the peer closed the connection cleanly between frames;
    raises ``ProtocolError`` for a malformed frame or a stream that ends inside one.
    """
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ProtocolError(
            f"truncated stream: connection closed after {len(e.partial)} of {HEADER.size} header bytes"
        ) from e
    kind, count, request_id, length = parse_header(header, max_bytes=max_bytes)
    try:
        payload = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError as e:
        raise ProtocolError(
            f"truncated stream: connection closed after {len(e.partial)} of {length} payload bytes"
        ) from e
    return decode_payload(kind, request_id, count, payload)


async def write_frame(writer: asyncio.StreamWriter, parts: Sequence[Buffer]) -> None:
    """Write the buffers of one encoded frame (from ``encode`` or ``encode_error``) and drain."""
    for part in parts:
        writer.write(part)
    await writer.drain()


# sendmsg takes at most IOV_MAX (1024 on Linux) buffers per call.
_IOV_BATCH = 512


def send_frame(sock: socket.socket, parts: Sequence[Buffer]) -> None:
    """Send the buffers of one encoded frame on a blocking socket, without joining them.

    Uses scatter-gather ``sendmsg`` and resumes after partial sends.  Socket
    errors (``OSError``, ``TimeoutError``) propagate to the caller.
    """
    pending = [memoryview(p).cast("B") for p in parts if len(p)]
    while pending:
        sent = sock.sendmsg(pending[:_IOV_BATCH])
        while sent and pending:
            head = pending[0]
            if sent >= len(head):
                sent -= len(head)
                pending.pop(0)
            else:
                pending[0] = head[sent:]
                sent = 0


def _recv_exactly(sock: socket.socket, buf: bytearray) -> int:
    """Fill ``buf`` from ``sock``; return how many bytes arrived before EOF (``len(buf)`` when complete)."""
    view = memoryview(buf)
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            return got
        got += n
    return got


def recv_frame(sock: socket.socket, *, max_bytes: int = MAX_FRAME_BYTES) -> Frame | None:
    """Receive one frame from a blocking socket.

    The payload is read with ``recv_into`` into one preallocated ``bytearray``
    that the returned arrays view (writable, no further copies).  Returns
    ``None`` when the peer closed cleanly between frames; raises
    ``ProtocolError`` for a malformed or truncated frame.  Socket errors propagate.
    """
    header = bytearray(HEADER.size)
    got = _recv_exactly(sock, header)
    if got == 0:
        return None
    if got < HEADER.size:
        raise ProtocolError(f"truncated stream: connection closed after {got} of {HEADER.size} header bytes")
    kind, count, request_id, length = parse_header(header, max_bytes=max_bytes)
    payload = bytearray(length)
    got = _recv_exactly(sock, payload)
    if got < length:
        raise ProtocolError(f"truncated stream: connection closed after {got} of {length} payload bytes")
    return decode_payload(kind, request_id, count, payload)
