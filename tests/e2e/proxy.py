"""A fault-injecting HTTPS proxy on loopback, in front of one or more upstream servers.

It terminates TLS with a certificate for the proxied name (issued by the test CA, so clients verify it
exactly as they would the real server), parses HTTP/1.1 with h11, and forwards each request to the next
upstream (round robin: with several instances of one homeserver it is "one address" spreading requests
over them). For requests whose path is in ``faulty_paths`` it injects, with probability ``rate``:

* ``drop_request``  — close the connection without forwarding (the peer never saw it);
* ``drop_response`` — forward, wait for the answer, then close without relaying it (processed, unanswered);
* ``reset``         — TCP RST, before or after forwarding (chosen at random);
* ``503``           — answer 503 ``unavailable`` without forwarding, or after forwarding (chosen at random).

Every decision comes from a seeded RNG, and every injected fault is counted, so a test can assert that
faults really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import ssl
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import h11
import httpx

__all__ = ["FAULTS", "FaultProxy"]

FAULTS = ("drop_request", "drop_response", "reset", "503")
READ_CHUNK = 65536


@dataclass
class FaultProxy:
    upstreams: Sequence[tuple[str, int]]
    host: str
    server_tls: ssl.SSLContext
    client_tls: ssl.SSLContext
    fault: str | None = None
    rate: float = 0.0
    seed: int = 0
    faulty_paths: frozenset[str] = frozenset({"/qs/v1/federated_enqueue"})
    counts: Counter[str] = field(default_factory=Counter)
    port: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._server: asyncio.Server | None = None
        self._next = 0
        self._client = httpx.AsyncClient(verify=self.client_tls, timeout=30.0, trust_env=False)
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", port or self.port, ssl=self.server_tls, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.transport.abort()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        await self._client.aclose()

    def _choose(self, path: str) -> str | None:
        if self.fault is None or path not in self.faulty_paths or self.rng.random() >= self.rate:
            return None
        return self.fault

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            await self._connection(reader, writer)
        except (ConnectionError, h11.ProtocolError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._conns.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request, body = await _read_request(conn, reader)
            if request is None:
                return
            path = request.target.decode("ascii", "replace").split("?", 1)[0]
            fault = self._choose(path)
            before = self.rng.random() < 0.5
            if fault == "drop_request":
                self.counts[fault] += 1
                return
            if fault == "reset" and before:
                self.counts["reset_before"] += 1
                _reset(writer)
                return
            if fault == "503" and before:
                self.counts["503_before"] += 1
                await _answer(conn, writer, 503, [(b"content-type", b"application/json")], _error_body())
                continue
            status, headers, answer = await self._forward(request, body)
            if fault == "drop_response":
                self.counts[fault] += 1
                return
            if fault == "reset":
                self.counts["reset_after"] += 1
                _reset(writer)
                return
            if fault == "503":
                self.counts["503_after"] += 1
                status, headers, answer = 503, [(b"content-type", b"application/json")], _error_body()
            self.counts["forwarded"] += 1
            await _answer(conn, writer, status, headers, answer)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _forward(
        self, request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        index = self._next % len(self.upstreams)
        host, port = self.upstreams[index]
        self._next += 1
        self.counts[f"upstream{index}"] += 1
        headers = {
            k.decode(): v.decode()
            for k, v in request.headers
            if k.lower() not in (b"host", b"content-length", b"connection", b"transfer-encoding")
        }
        headers["host"] = self.host
        try:
            r = await self._client.request(
                request.method.decode(),
                f"https://{host}:{port}{request.target.decode()}",
                content=body,
                headers=headers,
                extensions={"sni_hostname": self.host},
            )
        except httpx.TransportError:
            return 502, [(b"content-type", b"application/json")], _error_body("bad_gateway")
        keep = [
            (k.encode(), v.encode())
            for k, v in r.headers.items()
            if k.lower() not in ("content-length", "connection", "transfer-encoding", "content-encoding")
        ]
        return r.status_code, keep, r.content


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(READ_CHUNK)
            conn.receive_data(data)
            if not data and request is None:
                return None, b""
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None, b""


async def _answer(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


def _error_body(code: str = "unavailable") -> bytes:
    return json.dumps({"error": code, "message": "injected by the test proxy"}).encode()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
