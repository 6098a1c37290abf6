"""Keeping a running server's TLS certificate current: reissue, then reload in place.

The API port and the hub's MQTT port serve the certificate in ``home/tls`` (see
:mod:`fleetpki.services.server_cert`). It is reissued when a third of its life remains
and when the issuing CA has a new active generation, so that the old generation has
nothing outstanding and can retire (``fleetpki ca show``). The refresher asks the
service every :data:`REFRESH_INTERVAL_SECONDS` and, when a new certificate was issued,
loads it into every live :class:`ssl.SSLContext`: new handshakes get the new
certificate, connections already open keep theirs. The API context also learns any new
CA certificate for client certificates (EST re-enrolment with a certificate of the new
generation).

The issuance runs in a worker thread; the contexts are changed on the event loop's own
thread, between handshakes, because an ``SSL_CTX`` is not safe to change while another
thread creates connections from it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

from fleetpki.services.server_cert import ServerCertificateService, ServerTLSFiles

__all__ = ["REFRESH_INTERVAL_SECONDS", "TLSRefresher"]

#: How often a running server checks its certificate (seconds).
REFRESH_INTERVAL_SECONDS = 60.0

_log = logging.getLogger("fleetpki.serve")


@dataclass(frozen=True, slots=True)
class _Served:
    context: ssl.SSLContext
    verifies_clients: bool


class TLSRefresher:
    """The live TLS contexts of one server process and the service that certifies them.

    Args:
        certificates: the server-certificate service.
        hostname / host: the names the certificate must carry (as at start).
    """

    def __init__(self, certificates: ServerCertificateService, *, hostname: str, host: str) -> None:
        self._certificates = certificates
        self._hostname = hostname
        self._host = host
        self._served: list[_Served] = []

    def add(self, context: ssl.SSLContext, *, verifies_clients: bool) -> None:
        """Serve ``context``'s certificate from now on; ``verifies_clients`` when the
        context checks client certificates against the CA file itself (the API port)."""
        self._served.append(_Served(context, verifies_clients))

    async def refresh(self) -> bool:
        """Reissue the certificate if it is due and load it; ``True`` when it changed."""
        files, renewed = await asyncio.to_thread(
            self._certificates.refresh, hostname=self._hostname, host=self._host
        )
        if renewed:
            self._load(files)
        return renewed

    def _load(self, files: ServerTLSFiles) -> None:
        for served in self._served:
            served.context.load_cert_chain(files.certfile, files.keyfile)
            if served.verifies_clients:
                served.context.load_verify_locations(cafile=str(files.client_ca_file))
        _log.info(
            "server certificate reissued by the current issuing CA and loaded on %d port(s)",
            len(self._served),
        )

    async def run(self, interval: float = REFRESH_INTERVAL_SECONDS) -> None:
        """Refresh every ``interval`` seconds until cancelled; a failure is logged and
        tried again at the next turn (the certificate in use stays valid meanwhile)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:
                _log.exception("could not refresh the server certificate")
