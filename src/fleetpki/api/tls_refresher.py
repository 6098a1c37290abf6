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

Under ``fleetpki serve --workers N`` only the primary worker issues; the others are
built with ``issues=False`` and load the files when the primary has replaced them, so
that N processes never issue N certificates at once.
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
        issues: reissue when due (one process per home); ``False`` only follows the
            files another process of the home reissues.
    """

    def __init__(
        self,
        certificates: ServerCertificateService,
        *,
        hostname: str,
        host: str,
        issues: bool = True,
    ) -> None:
        self._certificates = certificates
        self._hostname = hostname
        self._host = host
        self._issues = issues
        self._served: list[_Served] = []
        self._loaded = self._on_disk()

    def add(self, context: ssl.SSLContext, *, verifies_clients: bool) -> None:
        """Serve ``context``'s certificate from now on; ``verifies_clients`` when the
        context checks client certificates against the CA file itself (the API port)."""
        self._served.append(_Served(context, verifies_clients))

    async def refresh(self) -> bool:
        """Reissue the certificate if it is due (or, with ``issues=False``, see whether
        another process did) and load it; ``True`` when it changed."""
        if not self._issues:
            current = await asyncio.to_thread(self._on_disk)
            if current == self._loaded:
                return False
            # Recorded only once loaded: a key and certificate caught between their two
            # renames do not match, fail here, and are loaded at the next turn.
            self._load(self._certificates.files())
            self._loaded = current
            return True
        files, renewed = await asyncio.to_thread(
            self._certificates.refresh, hostname=self._hostname, host=self._host
        )
        if renewed:
            self._load(files)
        return renewed

    def _on_disk(self) -> bytes:
        try:
            return self._certificates.files().certfile.read_bytes()
        except OSError:
            return b""

    def _load(self, files: ServerTLSFiles) -> None:
        for served in self._served:
            served.context.load_cert_chain(files.certfile, files.keyfile)
            if served.verifies_clients:
                served.context.load_verify_locations(cafile=str(files.client_ca_file))
        _log.info(
            "server certificate %s and loaded on %d port(s)",
            "reissued by the current issuing CA" if self._issues else "renewed by the primary",
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
