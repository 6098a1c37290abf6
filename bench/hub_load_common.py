"""A multi-process MQTT/TLS load client for the hub benchmarks, so that the client is not the limit.

Each process runs its own uvloop with its share of the devices (device ``i`` goes to
process ``i % processes``) and reports back what it did and the CPU it used
(``time.process_time``), so the tables can show the load client's CPU beside the
server's. The client does not verify the server's certificate (the same for both
servers; it saves the client a chain check per connect) but presents each device's
certificate, which is what the servers check.

Two jobs:

* `connect_rate`: each process keeps ``concurrency`` loops that open a mutual-TLS
  connection, CONNECT, wait for CONNACK 0, DISCONNECT and close, for ``seconds``.
* `IdleFleet`: connect every device and keep it idle; `IdleFleet.ping` sends a
  PINGREQ on every connection and counts the PINGRESPs (every device still connected).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from hub_common import Certs, connect_packet

__all__ = ["IdleFleet", "LoadResult", "connect_rate", "load_processes"]

_DISCONNECT = b"\xe0\x00"
_PINGREQ = b"\xc0\x00"


def load_processes() -> int:
    """The default number of load processes: the cores, at least 2."""
    return max(2, len(os.sched_getaffinity(0)))


def _context(certs: Certs, index: int) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    cert, key = certs.device(index)
    context.load_cert_chain(cert, key)
    return context


class _Client(asyncio.Protocol):
    """CONNECT on connection; CONNACK, then PINGRESPs counted."""

    def __init__(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        self.index = index
        self.connected: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.pong: asyncio.Future[None] | None = None
        self.received = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(connect_packet(self.index))  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.received += data
        if not self.connected.done() and len(self.received) >= 4:
            if self.received[3] != 0:
                self.connected.set_exception(RuntimeError(f"CONNACK {self.received[3]}"))
                return
            self.connected.set_result(None)
            self.received = self.received[4:]
        if self.pong is not None and self.received.startswith(b"\xd0\x00"):
            self.received = self.received[2:]
            if not self.pong.done():
                self.pong.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("closed before CONNACK"))
        if self.pong is not None and not self.pong.done():
            self.pong.set_exception(ConnectionError("closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def disconnect(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_DISCONNECT)
            self.transport.close()


async def _open(port: int, index: int, context: ssl.SSLContext) -> _Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: _Client(index), "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    await client.connected
    return client


@dataclass(frozen=True)
class LoadResult:
    """What the load processes did together."""

    count: int
    seconds: float
    cpu_seconds: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    @property
    def cpu_share(self) -> str:
        """Each process's CPU as a share of one core over the run."""
        return ", ".join(f"{cpu / self.seconds * 100:.0f} %" for cpu in self.cpu_seconds)


def _connect_worker(
    conn: multiprocessing.connection.Connection,
    folder: str,
    port: int,
    indexes: list[int],
    concurrency: int,
    start_at: float,
    seconds: float,
) -> None:
    certs = Certs(Path(folder))
    contexts = {i: _context(certs, i) for i in indexes}

    async def run() -> tuple[int, int]:
        count = errors = 0
        await asyncio.sleep(max(0.0, start_at - time.time()))
        stop_at = time.perf_counter() + seconds

        async def loop(slot: int) -> None:
            nonlocal count, errors
            mine = indexes[slot::concurrency]
            turn = 0
            while time.perf_counter() < stop_at:
                index = mine[turn % len(mine)]
                turn += 1
                try:
                    client = await _open(port, index, contexts[index])
                except (OSError, RuntimeError, ConnectionError):
                    errors += 1
                    continue
                client.disconnect()
                await client.closed
                count += 1

        await asyncio.gather(*(loop(s) for s in range(min(concurrency, len(indexes)))))
        return count, errors

    cpu = time.process_time()
    count, errors = uvloop.run(run())
    conn.send((count, errors, time.process_time() - cpu))


def connect_rate(
    certs: Certs, port: int, devices: int, *, processes: int, concurrency: int, seconds: float
) -> LoadResult:
    """Mutual-TLS connects per second with ``processes`` load processes, ``concurrency`` each."""
    context = multiprocessing.get_context("fork")
    start_at = time.time() + 1.0 + 0.002 * devices  # after every process loaded its keys
    pipes, workers = [], []
    for slot in range(processes):
        ours, theirs = context.Pipe()
        indexes = list(range(slot, devices, processes))
        worker = context.Process(
            target=_connect_worker,
            args=(theirs, str(certs.folder), port, indexes, concurrency, start_at, seconds),
        )
        worker.start()
        pipes.append(ours)
        workers.append(worker)
    results = [pipe.recv() for pipe in pipes]
    for worker in workers:
        worker.join()
    return LoadResult(
        count=sum(r[0] for r in results),
        seconds=seconds,
        cpu_seconds=[r[2] for r in results],
        errors=sum(r[1] for r in results),
    )


def _idle_worker(
    conn: multiprocessing.connection.Connection, folder: str, port: int, indexes: list[int]
) -> None:
    certs = Certs(Path(folder))
    contexts = [_context(certs, i) for i in indexes]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(25)
        cpu = time.process_time()

        async def one(index: int, context: ssl.SSLContext) -> _Client | None:
            async with limit:
                try:
                    return await _open(port, index, context)
                except (OSError, RuntimeError, ConnectionError):
                    return None

        opened = await asyncio.gather(*(one(i, c) for i, c in zip(indexes, contexts, strict=True)))
        clients = [c for c in opened if c is not None]
        conn.send(("connected", len(clients), time.process_time() - cpu))
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            cpu = time.process_time()
            if command == "ping":
                for client in clients:
                    client.pong = loop.create_future()
                    assert client.transport is not None
                    if not client.transport.is_closing():
                        client.transport.write(_PINGREQ)
                answers = await asyncio.gather(
                    *(asyncio.wait_for(c.pong, 60) for c in clients if c.pong is not None),
                    return_exceptions=True,
                )
                alive = sum(1 for a in answers if a is None)
                conn.send(("pinged", alive, time.process_time() - cpu))
            else:
                for client in clients:
                    client.disconnect()
                await asyncio.gather(*(c.closed for c in clients))
                conn.send(("closed", len(clients), time.process_time() - cpu))
                return

    uvloop.run(run())


class IdleFleet:
    """``devices`` devices connected from ``processes`` load processes, kept idle."""

    def __init__(self, certs: Certs, port: int, devices: int, processes: int) -> None:
        context = multiprocessing.get_context("fork")
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._workers: list[Any] = []
        for slot in range(processes):
            ours, theirs = context.Pipe()
            indexes = list(range(slot, devices, processes))
            worker = context.Process(
                target=_idle_worker, args=(theirs, str(certs.folder), port, indexes)
            )
            worker.start()
            self._pipes.append(ours)
            self._workers.append(worker)

    def _round(self, command: str | None) -> tuple[int, list[float]]:
        if command is not None:
            for pipe in self._pipes:
                pipe.send(command)
        answers = [pipe.recv() for pipe in self._pipes]
        return sum(a[1] for a in answers), [a[2] for a in answers]

    def connected(self) -> tuple[int, list[float]]:
        """Wait until every process has connected its devices: (how many, CPU seconds each)."""
        return self._round(None)

    def ping(self) -> tuple[int, list[float]]:
        """A PINGREQ on every connection: (PINGRESPs received, CPU seconds each)."""
        return self._round("ping")

    def close(self) -> tuple[int, list[float]]:
        """DISCONNECT and close every connection; the processes end."""
        result = self._round("close")
        for worker in self._workers:
            worker.join()
        return result
