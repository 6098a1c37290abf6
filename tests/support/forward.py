"""Forward 127.0.0.1:443 to a test server's port: the Azure SDKs dial 443 only (ref §0)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

__all__ = ["forward_443"]


@contextmanager
def forward_443(target_port: int) -> Iterator[None]:
    """Forward TCP from 127.0.0.1:443 to ``target_port`` (TLS passes through untouched)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", 443))
    except OSError as exc:
        listener.close()
        pytest.skip(f"the Azure SDK dials port 443 only, and 127.0.0.1:443 cannot be bound: {exc}")
    listener.listen(8)
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
            upstream = socket.create_connection(("127.0.0.1", target_port))
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
