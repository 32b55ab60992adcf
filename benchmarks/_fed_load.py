"""The load generator of ``bench_federation.py --entry ds``, in its own process.

It holds pre-encoded HTTP/1.1 requests (everything client-side was done before: MLS protection, the
DsAuthToken signature, the Privacy Pass token) and writes them on a few keep-alive TLS connections (asyncio
streams), pipelined, with at most ``window`` requests in flight in all. Each request names its connection:
the bench gives each sending client its own, so a client's messages reach the DS in the order it sent them
(HTTP/1.1 answers a connection's requests in order). Responses are matched first in, first out.

Commands on the pipe (answers in brackets):

* ``("connect", port, server_name, ca_file, connections)`` — open the connections [``"ready"``];
* ``("send", [(index, connection, request bytes), ...], window, rate)`` — send in that order, ``rate``
  messages per second if > 0, else as fast as the window allows [:class:`LoadResult`];
* ``("stop",)`` — close and exit.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe

from phx.server import run_event_loop


@dataclass
class LoadResult:
    #: Wall-clock times (``time.time()``, comparable across processes) per message index.
    sent: dict[int, float] = field(default_factory=dict)
    answered: dict[int, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: This process's CPU seconds for the whole send.
    cpu: float = 0.0


def http_request(host: str, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/octet-stream\r\n"
        f"accept: application/octet-stream\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.fifo: deque[int] = deque()


async def _read_responses(
    conn: _Conn, result: LoadResult, window: asyncio.Semaphore, left: list[int], finished: asyncio.Event
) -> None:
    reader = conn.reader
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        t = time.time()
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        length = 0 if at < 0 else int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
        body = await reader.readexactly(length) if length else b""
        index = conn.fifo.popleft()
        result.answered[index] = t
        if status != 200:
            result.failures.append(f"message {index}: HTTP {status} {body[:200]!r}")
        left[0] -= 1
        window.release()
        if left[0] == 0:
            finished.set()


async def _send(
    conns: Sequence[_Conn], requests: Sequence[tuple[int, int, bytes]], window: int, rate: float
) -> LoadResult:
    result = LoadResult()
    sem = asyncio.Semaphore(window)
    left = [len(requests)]
    finished = asyncio.Event()
    cpu = time.process_time()
    readers = [asyncio.create_task(_read_responses(c, result, sem, left, finished)) for c in conns]
    start = time.monotonic()
    for k, (index, which, raw) in enumerate(requests):
        await sem.acquire()
        if rate:
            # Open loop at a fixed offered load: latency without the backlog of a saturated run.
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        conn = conns[which]
        conn.fifo.append(index)
        result.sent[index] = time.time()
        conn.writer.write(raw)
        await conn.writer.drain()
    waiter = asyncio.create_task(finished.wait())
    # A reader only ends by failing (its connection broke or answered garbage).
    await asyncio.wait([waiter, *readers], timeout=600, return_when=asyncio.FIRST_COMPLETED)
    if not finished.is_set():
        result.failures.append(f"{left[0]} requests unanswered")
    for task in [waiter, *readers]:
        if task.done() and not task.cancelled() and task.exception() is not None:
            result.failures.append(f"connection failed: {task.exception()!r}")
        task.cancel()
    await asyncio.gather(waiter, *readers, return_exceptions=True)
    result.cpu = time.process_time() - cpu
    return result


async def _main(pipe: Pipe) -> None:
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command[0] == "connect":
            _, port, server_name, ca_file, count = command
            ctx = ssl.create_default_context(cafile=ca_file)
            for _ in range(count):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname=server_name
                )
                conns.append(_Conn(reader, writer))
            pipe.send("ready")
        elif command[0] == "send":
            _, requests, window, rate = command
            pipe.send(await _send(conns, requests, window, rate))
        else:
            for c in conns:
                c.writer.close()
            return


def main(pipe: Pipe) -> None:
    run_event_loop(_main(pipe))
