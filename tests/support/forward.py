"""A TCP forwarder from a fixed local port to a test server's free port.

The unmodified Azure SDKs dial fixed ports (8883, 443, 5671; ref §0) while the test
servers listen on free ones; bytes pass through untouched, so TLS is end to end.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

__all__ = ["forward_443", "forward_port"]


@contextmanager
def forward_port(listen_port: int, target_port: int) -> Iterator[None]:
    """Forward 127.0.0.1:``listen_port`` to ``target_port``; skip the test if it is taken."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", listen_port))
    except OSError as exc:
        listener.close()
        pytest.skip(
            f"the Azure SDK dials port {listen_port} only, and 127.0.0.1:{listen_port} "
            f"cannot be bound: {exc}"
        )
    listener.listen(16)
    sockets: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def accept() -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", target_port))
            except OSError:
                downstream.close()
                continue
            sockets.extend((downstream, upstream))
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                thread = threading.Thread(target=pipe, args=(source, sink), daemon=True)
                thread.start()
                threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        acceptor.join(5)
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            sock.close()


@contextmanager
def forward_443(target_port: int) -> Iterator[None]:
    """Forward TCP from 127.0.0.1:443 to ``target_port`` (TLS passes through untouched)."""
    with forward_port(443, target_port):
        yield
