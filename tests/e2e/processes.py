"""Homeservers as real OS processes: ``phx serve --config FILE`` started with the installed CLI, killed with
SIGKILL (no graceful anything) and restarted on the same database and port.

:func:`write_configs` writes a test CA (``phx dev-setup``'s), one certificate and one TOML config per
domain, every domain's service names pointing at its loopback port. Ports are picked free up front rather
than bound as port 0 by the server: a peer's address is written into the other configs and must survive
restarts. :class:`Homeserver` is one process: :meth:`~Homeserver.start` waits until ``GET /health``
answers over HTTPS, :meth:`~Homeserver.kill` sends SIGKILL to its pid and reaps it. Each process runs in
its own session so that nothing else (pytest's signals, a terminal) reaches it; :func:`homeservers`
kills whatever is still running when the test ends, and the kernel kills it if pytest dies first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from phx.cli.dev_setup import write_dev_setup
from phx.client.demo import free_ports

__all__ = ["Homeserver", "Metrics", "ProcessNet", "homeservers", "wait_until", "write_configs"]

PHX = Path(sys.executable).parent / "phx"
#: A server outlives nothing: if pytest itself dies (no finalizer runs), the kernel kills it (Linux).
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_PARENT = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV and sys.platform == "linux" else []
START_TIMEOUT = 60.0

#: Fast federation timings for tests; no federation rate limits (1,000 messages go into one queue) and
#: token allowances far above what a test spends.
TEST_SETTINGS = """
[federation.outbox]
backoff_base = "50ms"
backoff_max = "500ms"
batch_size = {batch_size}

[federation.rate_limit]
per_domain_rate = 0
per_queue_rate = 0

[as]
token_allowance = 100000
domain_token_allowance = 0
new_domain_token_allowance = 100000
"""


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def hosts_of(ports: Mapping[str, int]) -> dict[str, str]:
    """``as./ds./qs.<domain>`` -> ``127.0.0.1:<port>`` (resolver overrides for servers and clients)."""
    return {f"{s}.{d}": f"127.0.0.1:{p}" for d, p in ports.items() for s in ("as", "ds", "qs")}


@dataclass(frozen=True)
class ProcessNet:
    """The CA, and the port and config file of every domain."""

    directory: Path
    ca_file: Path
    ports: dict[str, int]
    configs: dict[str, Path]

    @property
    def hosts(self) -> dict[str, str]:
        return hosts_of(self.ports)


def write_configs(directory: Path, database_urls: Mapping[str, str], *, batch_size: int = 100) -> ProcessNet:
    """A CA, certificates and configs for the domains of ``database_urls`` (domain -> database URL)."""
    domains = list(database_urls)
    setup = write_dev_setup(directory, domains, ports=free_ports(len(domains)))
    overrides = [f"{_toml_str(h)} = {_toml_str(t)}" for h, t in sorted(hosts_of(setup.ports).items())]
    configs: dict[str, Path] = {}
    for domain, url in database_urls.items():
        home = setup.directory / domain
        lines = [
            "[server]",
            f"domain = {_toml_str(domain)}",
            'listen_host = "127.0.0.1"',
            f"listen_port = {setup.ports[domain]}",
            f"tls_cert = {_toml_str(str(home / 'cert.pem'))}",
            f"tls_key = {_toml_str(str(home / 'key.pem'))}",
            f"data_dir = {_toml_str(str(home))}",
            f"database_url = {_toml_str(url)}",
            'log_level = "warning"',
            "",
            "[federation]",
            # One instance per domain here: its name stays across restarts, as an operator would set it.
            f"instance_name = {_toml_str(domain + '-1')}",
            f"ca_file = {_toml_str(str(setup.ca_file))}",
            'connect_timeout = "2s"',
            'request_timeout = "10s"',
            "",
            "[federation.resolver_overrides]",
            *overrides,
            TEST_SETTINGS.format(batch_size=batch_size),
        ]
        path = setup.directory / f"{domain}.toml"
        path.write_text("\n".join(lines))
        configs[domain] = path
    return ProcessNet(setup.directory, setup.ca_file, dict(setup.ports), configs)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Metrics:
    """One scrape of ``/metrics`` (Prometheus text format)."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m is None or line.startswith("#"):
                continue
            labels = frozenset(_LABEL.findall(m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
        return cls(samples)

    def get(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 if absent (a counter not yet incremented)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Homeserver:
    """One ``phx serve`` process (at most one at a time) for one config; restartable."""

    domain: str
    config: Path
    port: int
    ca_file: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _http: httpx.AsyncClient | None = field(default=None, repr=False)
    _stale: list[httpx.AsyncClient] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            self._http = httpx.AsyncClient(verify=ctx, timeout=10.0, trust_env=False)
        return self._http

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the process and wait until it serves ``/health`` (its database migrated, its services and
        federation sender running)."""
        assert not self.running, f"{self.domain} is already running"
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*_DIE_WITH_PARENT, str(PHX), "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.config.parent,
            )
        await wait_until(self._healthy, timeout, what=f"{self.domain} to serve /health")

    async def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.domain} exited with status {self.proc.returncode}:\n{self.log_tail()}"
            )
        try:
            r = await self._client().get(f"{self.url}/health", timeout=2.0)
        except httpx.TransportError:
            return False
        return r.status_code == 200 and r.json().get("domain") == self.domain

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to finish a request, commit, release a lease or close."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(timeout=30)
        # Its keep-alive connections are dead; the next process gets fresh ones.
        if self._http is not None:
            self._stale.append(self._http)
            self._http = None

    def pause(self) -> None:
        """SIGSTOP: the process hangs (connections are accepted by the kernel, nothing answers)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    async def metrics(self) -> Metrics:
        r = await self._client().get(f"{self.url}/metrics")
        assert r.status_code == 200, r.text
        return Metrics.parse(r.text)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def aclose(self) -> None:
        self.kill()
        stale, self._stale = self._stale, []
        for http in stale:
            with contextlib.suppress(Exception):
                await http.aclose()


@asynccontextmanager
async def homeservers(net: ProcessNet) -> AsyncIterator[dict[str, Homeserver]]:
    """One (not yet started) :class:`Homeserver` per domain; every process still running at the end is
    killed and reaped, whatever happened."""
    servers = {
        d: Homeserver(d, path, net.ports[d], net.ca_file, net.directory / f"{d}.log")
        for d, path in net.configs.items()
    }
    try:
        yield servers
    finally:
        for hs in servers.values():
            with contextlib.suppress(Exception):
                await hs.aclose()


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float,
    *,
    what: str = "condition",
    interval: float = 0.05,
) -> float:
    """Await ``predicate()`` until it is true; returns the seconds it took, fails after ``timeout``."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - start
