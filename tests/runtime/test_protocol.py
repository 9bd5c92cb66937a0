"""The wire protocol: round trips over real sockets and streams, and malformed frames."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import numpy as np
import pytest

from cogent_compiler.errors import ProtocolError
from cogent_compiler.runtime import protocol
from cogent_compiler.runtime.protocol import (
    ERROR,
    HEADER,
    MAGIC,
    REQUEST,
    RESPONSE,
    VERSION,
    decode_payload,
    encode,
    encode_error,
    parse_header,
    read_frame,
    recv_frame,
    send_frame,
)


def _join(parts: list[protocol.Buffer]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def _decode(data: bytes) -> protocol.Frame:
    kind, count, rid, length = parse_header(data[: HEADER.size])
    assert len(data) == HEADER.size + length
    return decode_payload(kind, rid, count, data[HEADER.size :])


def _over_socket(parts: list[protocol.Buffer]) -> protocol.Frame | None:
    """Send ``parts`` through a real socket pair and receive them with recv_frame."""
    a, b = socket.socketpair()
    with a, b:
        t = threading.Thread(target=send_frame, args=(a, parts))
        t.start()
        frame = recv_frame(b)
        t.join()
    return frame


def _over_stream(data: bytes) -> protocol.Frame | None:
    async def go() -> protocol.Frame | None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame(reader)

    return asyncio.run(go())


def _assert_same(got: list[tuple[str, np.ndarray]], want: list[tuple[str, np.ndarray]]) -> None:
    assert [n for n, _ in got] == [n for n, _ in want]
    for (_, g), (_, w) in zip(got, want):
        assert g.shape == np.shape(w)
        assert g.dtype == np.asarray(w).dtype.newbyteorder("=")
        np.testing.assert_array_equal(g, w)


DTYPES = [
    "float32",
    "float64",
    "float16",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(dtype: str) -> None:
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((2, 3, 5)) * 50).astype(dtype)
    tensors = [("t", arr)]
    for frame in (_decode(_join(encode(REQUEST, 7, tensors))), _over_socket(encode(REQUEST, 7, tensors))):
        assert frame is not None and frame.kind == REQUEST and frame.request_id == 7
        _assert_same(frame.tensors, tensors)


def test_round_trip_scalar_empty_and_odd_shapes() -> None:
    tensors = [
        ("scalar", np.array(3.5, dtype=np.float32)),
        ("empty", np.zeros((0, 4), dtype=np.int64)),
        ("odd", np.arange(7, dtype=np.uint8).reshape(7, 1)),
        ("après-ünïcode", np.ones((1,), dtype=np.float64)),
        ("", np.array([True, False])),
    ]
    frame = _over_socket(encode(RESPONSE, 0xFFFFFFFF, tensors))
    assert frame is not None and frame.kind == RESPONSE and frame.request_id == 0xFFFFFFFF
    _assert_same(frame.tensors, tensors)
    assert frame.as_dict()["scalar"].shape == ()


def test_round_trip_many_tensors_beyond_iov_max() -> None:
    tensors = [(f"t{i}", np.full((3,), i, dtype=np.int32)) for i in range(3000)]
    frame = _over_socket(encode(REQUEST, 1, tensors))
    assert frame is not None
    _assert_same(frame.tensors, tensors)


def test_round_trip_large_tensor_without_copies() -> None:
    big = np.random.default_rng(2).standard_normal((8, 256, 64, 64), dtype=np.float32)  # 32 MiB
    parts = encode(REQUEST, 3, [("big", big)])
    data_parts = [p for p in parts if isinstance(p, memoryview)]
    assert len(data_parts) == 1 and np.shares_memory(np.asarray(data_parts[0]), big)
    frame = _over_socket(parts)
    assert frame is not None
    np.testing.assert_array_equal(frame.arrays[0], big)
    out = frame.arrays[0]
    assert out.flags.writeable and out.ctypes.data % 8 == 0


def test_non_contiguous_and_big_endian_arrays_are_sent_as_values() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    tensors = [("t", base.T), ("be", np.arange(5, dtype=">i4"))]
    frame = _decode(_join(encode(REQUEST, 1, tensors)))
    np.testing.assert_array_equal(frame.arrays[0], base.T)
    np.testing.assert_array_equal(frame.arrays[1], np.arange(5))
    assert frame.arrays[1].dtype == np.dtype("<i4")


def test_data_is_aligned_within_the_payload() -> None:
    frame = _decode(_join(encode(REQUEST, 1, [("a", np.zeros(3, np.uint8)), ("bb", np.ones(2, np.float64))])))
    np.testing.assert_array_equal(frame.arrays[1], [1.0, 1.0])


def test_error_frame_round_trip() -> None:
    frame = _over_stream(_join(encode_error(9, "tensor 'relu' has shape [1] — expected [2]")))
    assert frame is not None and frame.kind == ERROR and frame.request_id == 9
    assert frame.message == "tensor 'relu' has shape [1] — expected [2]" and frame.tensors == []


def test_stream_reads_consecutive_frames_then_clean_eof() -> None:
    data = _join(encode(REQUEST, 1, [("a", np.ones(2, np.float32))])) + _join(encode(REQUEST, 2, []))

    async def go() -> list[protocol.Frame | None]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return [await read_frame(reader) for _ in range(3)]

    first, second, end = asyncio.run(go())
    assert first is not None and first.request_id == 1 and second is not None and second.request_id == 2
    assert end is None


def test_clean_close_on_socket_returns_none() -> None:
    a, b = socket.socketpair()
    a.close()
    with b:
        assert recv_frame(b) is None


def test_unsupported_dtype_is_refused_when_encoding() -> None:
    with pytest.raises(ProtocolError, match="complex64"):
        encode(REQUEST, 1, [("c", np.zeros(2, np.complex64))])
    with pytest.raises(ProtocolError, match="object"):
        encode(REQUEST, 1, [("o", np.array([None]))])


def _header(
    magic: bytes = MAGIC, version: int = VERSION, kind: int = REQUEST, count: int = 0, rid: int = 1, n: int = 0
) -> bytes:
    return HEADER.pack(magic, version, kind, count, rid, n)


def _tensor(name: bytes, code: int, dims: list[int], data: bytes, pad: bool = True) -> bytes:
    head = (
        struct.pack("!H", len(name))
        + name
        + struct.pack("!BB", code, len(dims))
        + b"".join(struct.pack("!I", d) for d in dims)
    )
    if pad:
        head += bytes(-len(head) % 8)
    return head + data


def _frame(count: int, payload: bytes) -> bytes:
    return _header(count=count, n=len(payload)) + payload


MALFORMED = {
    "bad magic": (_header(magic=b"HTTP"), "bad magic"),
    "http request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad magic"),
    "unknown version": (_header(version=9), "version 9"),
    "unknown kind": (_header(kind=7), "kind 7"),
    "absurd size": (_header(n=protocol.MAX_FRAME_BYTES + 1), "exceeds the limit"),
    "truncated header": (_header()[:11], "truncated"),
    "truncated payload": (_header(count=1, n=100) + b"\x00" * 10, "truncated"),
    "unknown dtype": (
        _frame(1, _tensor(b"x", 99, [1], b"\0" * 4)),
        "unknown dtype code 99",
    ),
    "rank too high": (
        _frame(1, _tensor(b"x", 1, [1] * 40, b"")),
        "rank 40",
    ),
    "data past payload": (
        _frame(1, _tensor(b"x", 1, [1000], b"\0" * 16)),
        "truncated frame",
    ),
    "count larger than tensors": (
        _frame(2, _tensor(b"x", 1, [1], b"\0" * 4)),
        "truncated frame",
    ),
    "trailing bytes": (
        _frame(1, _tensor(b"x", 1, [1], b"\0" * 8)),
        "bytes after",
    ),
    "bad utf-8 name": (
        _frame(1, _tensor(b"\xff\xfe", 1, [1], b"\0" * 4)),
        "UTF-8",
    ),
    "error frame with tensors": (_header(kind=ERROR, count=1), "ERROR frame"),
    "huge dims": (
        _frame(1, _tensor(b"x", 2, [0xFFFFFFFF, 0xFFFFFFFF], b"")),
        "truncated frame",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frames_raise_protocol_error(case: str) -> None:
    data, message = MALFORMED[case]
    with pytest.raises(ProtocolError, match=message):
        _over_stream(data)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError, match=message):
            recv_frame(b)


def test_frame_limit_is_configurable() -> None:
    data = _join(encode(REQUEST, 1, [("a", np.zeros(1000, np.float32))]))
    with pytest.raises(ProtocolError, match="exceeds the limit of 100 bytes"):
        parse_header(data[: HEADER.size], max_bytes=100)


def test_asyncio_server_and_blocking_client_over_tcp() -> None:
    """read_frame/write_frame on a real asyncio TCP server, send_frame/recv_frame on a blocking client."""
    big = np.random.default_rng(3).standard_normal((4, 128, 64, 64), dtype=np.float32)  # 8 MiB
    result: dict[str, object] = {}

    async def main() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (frame := await read_frame(reader)) is not None:
                await protocol.write_frame(writer, encode(RESPONSE, frame.request_id, frame.tensors[::-1]))
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def client() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                frames = []
                for rid in (1, 2):
                    send_frame(s, encode(REQUEST, rid, [("big", big), ("small", np.arange(3))]))
                    frames.append(recv_frame(s))
                result["frames"] = frames

        await asyncio.to_thread(client)
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    frames = result["frames"]
    assert isinstance(frames, list)
    for rid, frame in zip((1, 2), frames):
        assert frame.kind == RESPONSE and frame.request_id == rid and frame.names == ["small", "big"]
        np.testing.assert_array_equal(frame.arrays[1], big)
