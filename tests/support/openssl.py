"""Run the real ``openssl`` binary as a relying party: chain, CRL and OCSP checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "OcspQueryResult",
    "VerifyResult",
    "crl_verify",
    "ocsp_query",
    "openssl",
    "verify",
    "verify_with_crl",
]

_TIMEOUT_SECONDS = 60
_VERIFY_ERROR = re.compile(
    r"^error (?P<code>\d+) at (?P<depth>\d+) depth lookup: ?(?P<text>.*)$", re.M
)
_OCSP_STATUS = re.compile(r"^(?P<name>\S.*): (?P<status>good|revoked|unknown)$", re.M)
_OCSP_REASON = re.compile(r"^\s+Reason: (?P<reason>\S+)$", re.M)
_OCSP_REVOCATION_TIME = re.compile(r"^\s+Revocation Time: (?P<time>.+)$", re.M)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``openssl`` with ``args`` and return what it did, whatever its exit status.

    Raises:
        RuntimeError: when no ``openssl`` binary is on the PATH.
    """
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("the openssl binary is not installed")
    return subprocess.run(
        [binary, *(str(arg) for arg in args)],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_SECONDS,
        check=False,
    )


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What ``openssl verify`` said about one certificate.

    Attributes:
        ok: whether the certificate verified.
        error_code: the ``X509_V_ERR_*`` number of the first error, if any
            (23 is ``certificate revoked``, 3 ``unable to get certificate CRL``).
        error: the text of that error.
        output: stdout and stderr, for assertion messages.
    """

    ok: bool
    error_code: int | None
    error: str | None
    output: str


def verify(leaf: Path, *chain: Path, purpose: str | None = None) -> VerifyResult:
    """``openssl verify`` a PEM certificate against its chain.

    Args:
        leaf: the PEM certificate to check.
        chain: PEM certificates from the leaf's issuer up to the root; the last
            is the trust anchor (``-CAfile``), the others are ``-untrusted``.
        purpose: an ``openssl verify -purpose`` value such as ``sslclient``.
    """
    return _verify(leaf, chain, purpose=purpose, crls=(), check_all=False)


def verify_with_crl(
    leaf: Path,
    *chain: Path,
    crls: Sequence[Path],
    check_all: bool = False,
    purpose: str | None = None,
) -> VerifyResult:
    """``openssl verify -crl_check`` (or ``-crl_check_all``) with the given CRLs.

    Args:
        leaf: the PEM certificate to check.
        chain: as for :func:`verify`.
        crls: CRL files, DER or PEM; they are handed over as one ``-CRLfile``.
        check_all: check every certificate in the chain, not only the leaf.
        purpose: as for :func:`verify`.
    """
    return _verify(leaf, chain, purpose=purpose, crls=crls, check_all=check_all)


def _verify(
    leaf: Path,
    chain: Sequence[Path],
    *,
    purpose: str | None,
    crls: Sequence[Path],
    check_all: bool,
) -> VerifyResult:
    if not chain:
        raise ValueError("verify needs at least the trust anchor")
    with tempfile.TemporaryDirectory(prefix="fleetpki-openssl-") as scratch:
        args: list[str | Path] = ["verify", "-CAfile", chain[-1]]
        if len(chain) > 1:
            args += ["-untrusted", _concatenate(Path(scratch, "untrusted.pem"), chain[:-1])]
        if crls:
            args += [
                "-crl_check_all" if check_all else "-crl_check",
                "-CRLfile",
                _concatenate_crls(Path(scratch, "crls.pem"), crls),
            ]
        if purpose is not None:
            args += ["-purpose", purpose]
        done = openssl(*args, leaf)
    output = done.stdout + done.stderr
    match = _VERIFY_ERROR.search(output)
    return VerifyResult(
        ok=done.returncode == 0 and match is None,
        error_code=int(match["code"]) if match else None,
        error=match["text"].strip() if match else None,
        output=output,
    )


def _concatenate(target: Path, pem_files: Sequence[Path]) -> Path:
    target.write_bytes(b"".join(Path(path).read_bytes() for path in pem_files))
    return target


def _concatenate_crls(target: Path, crl_files: Sequence[Path]) -> Path:
    pems = []
    for path in crl_files:
        data = Path(path).read_bytes()
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
        pems.append(crl.public_bytes(serialization.Encoding.PEM))
    target.write_bytes(b"".join(pems))
    return target


def crl_verify(crl: Path, ca_file: Path) -> bool:
    """Whether ``openssl crl -verify`` accepts the CRL's signature by a CA in ``ca_file``.

    Args:
        crl: the CRL file, DER or PEM.
        ca_file: PEM certificates, among them the CRL's issuer.
    """
    inform = "PEM" if Path(crl).read_bytes().lstrip().startswith(b"-----") else "DER"
    done = openssl("crl", "-inform", inform, "-in", crl, "-CAfile", ca_file, "-verify", "-noout")
    return done.returncode == 0 and "verify OK" in done.stdout + done.stderr


@dataclass(frozen=True, slots=True)
class OcspQueryResult:
    """What ``openssl ocsp -respin`` said about a response.

    Attributes:
        verified: ``Response verify OK``: signature, signer and chain checked.
        status: ``good``, ``revoked`` or ``unknown`` for the certificate asked
            about, or ``None`` when none was (a ``-reqin`` nonce check).
        reason: the revocation reason as openssl prints it (``keyCompromise``).
        revocation_time: the revocation time as openssl prints it.
        nonce_ok: ``False`` when openssl reported a missing or different nonce.
        returncode: openssl's exit status.
        output: stdout and stderr, for assertion messages.
    """

    verified: bool
    status: str | None
    reason: str | None
    revocation_time: str | None
    nonce_ok: bool
    returncode: int
    output: str


def ocsp_query(
    response: Path,
    *,
    ca_file: Path,
    issuer: Path | None = None,
    serial: int | None = None,
    cert: Path | None = None,
    request: Path | None = None,
    verify_other: Path | None = None,
    cert_id_hash: str = "sha1",
) -> OcspQueryResult:
    """Verify a DER OCSP response with ``openssl ocsp -respin`` and parse its status line.

    Either name the certificate asked about (``issuer`` with ``serial`` or
    ``cert``), which yields its status, or pass the DER ``request`` the response
    answers, which makes openssl check that the nonce was echoed.

    Args:
        response: the DER OCSP response.
        ca_file: the trusted certificates (``-CAfile``).
        issuer: the PEM issuer of the certificate asked about.
        serial: the serial number asked about.
        cert: the PEM certificate asked about, instead of ``serial``.
        request: the DER request that the response answers (``-reqin``).
        verify_other: PEM certificates that may hold the responder's (``-verify_other``).
        cert_id_hash: the hash openssl uses for the CertID it looks for (``-sha256``...).
    """
    args: list[str | Path] = ["ocsp", "-respin", response, "-CAfile", ca_file]
    if request is not None:
        args += ["-reqin", request]
    else:
        if issuer is None or (serial is None) == (cert is None):
            raise ValueError("name the certificate: issuer with either serial or cert")
        # openssl adds a random nonce to the request it builds for the status
        # check; that request is never sent, so the nonce check would fail.
        # The digest option applies to the -serial or -cert options after it.
        args += [f"-{cert_id_hash}", "-issuer", issuer, "-no_nonce"]
        if serial is not None:
            args += ["-serial", hex(serial)]
        elif cert is not None:
            args += ["-cert", cert]
    if verify_other is not None:
        args += ["-verify_other", verify_other]
    done = openssl(*args)
    output = done.stdout + done.stderr
    status = _OCSP_STATUS.search(done.stdout)
    reason = _OCSP_REASON.search(done.stdout)
    revoked_at = _OCSP_REVOCATION_TIME.search(done.stdout)
    return OcspQueryResult(
        verified="Response verify OK" in output,
        status=status["status"] if status else None,
        reason=reason["reason"] if reason else None,
        revocation_time=revoked_at["time"].strip() if revoked_at else None,
        nonce_ok="Nonce Verify error" not in output and "no nonce in response" not in output,
        returncode=done.returncode,
        output=output,
    )
