"""Lint what fleetpki produces with the real pkilint: certificates, CRLs and OCSP responses."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp as x509_ocsp
from pkilint import loader, pkix, validation  # type: ignore[import-untyped]
from pkilint.pkix import certificate, crl, extension, name  # type: ignore[import-untyped]
from pkilint.pkix import ocsp as pkilint_ocsp  # type: ignore[import-untyped, unused-ignore]
from pkilint.validation import ValidationFindingSeverity  # type: ignore[import-untyped]

__all__ = [
    "Kind",
    "assert_lints_clean",
    "lint",
    "lint_certificate",
    "lint_crl",
    "lint_ocsp_response",
]

#: What a DER document is: the three things fleetpki signs.
Kind = Literal["certificate", "crl", "ocsp_response"]

_Validator = Any  # pkilint ships no type information


@functools.cache
def _certificate_validator() -> _Validator:
    # The validator container that pkilint's `lint_pkix_cert` CLI builds: the
    # RFC 5280 profile.  It needs no CA/EE switch: pkilint reads basicConstraints
    # (`RFC5280Certificate.is_ca`) and applies the CA or end-entity rules itself.
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


@functools.cache
def _crl_validator() -> _Validator:
    # `lint_crl --profile PKIX`: the CRL/ARL type only matters to the CA/B Forum
    # profile, so the RFC 5280 profile serves both.
    return crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            crl.create_issuer_validator_container([]),
            crl.create_validity_validator_container([]),
            crl.create_extensions_validator_container([]),
        ],
    )


@functools.cache
def _ocsp_validator() -> _Validator:
    # `lint_ocsp_response`: the RFC 6960 profile.
    return pkilint_ocsp.create_pkix_ocsp_response_validator_container(
        [
            pkilint_ocsp.create_response_decoder(),
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [],
    )


def _threshold(include_warnings: bool) -> ValidationFindingSeverity:
    return (
        ValidationFindingSeverity.WARNING if include_warnings else ValidationFindingSeverity.ERROR
    )


def _run(
    load: Callable[[bytes, str], Any],
    validator: _Validator,
    der: bytes,
    document_name: str,
    threshold: ValidationFindingSeverity,
) -> list[str]:
    try:
        document = load(der, document_name)
    except ValueError as exc:
        # A document pkilint cannot even decode is the worst finding of all.
        return [f"FATAL {document_name}.load_failed: {exc}"]
    # pkilint logs (with a traceback) any validator that raises, and also reports
    # it as a FATAL base.unhandled_exception finding, so the log adds nothing.
    pkilint_logger = logging.getLogger(validation.__name__)
    was_disabled = pkilint_logger.disabled
    pkilint_logger.disabled = True
    try:
        results = validator.validate(document.root)
    finally:
        pkilint_logger.disabled = was_disabled
    findings = []
    for result in results:
        for description in result.finding_descriptions:
            finding = description.finding
            if finding.severity > threshold:  # lower numbers are more severe
                continue
            line = f"{finding.severity.name} {finding.code} @ {result.node.path}"
            if description.message:
                line += f": {description.message}"
            findings.append(line)
    return findings


def lint_certificate(der: bytes, *, include_warnings: bool = False) -> list[str]:
    """Lint a DER certificate against pkilint's RFC 5280 profile (``lint_pkix_cert``).

    Args:
        der: the DER-encoded certificate.
        include_warnings: also report WARNING findings (SHOULD violations).

    Returns:
        One line per finding of severity ERROR or worse (WARNING or worse when
        asked), ``"SEVERITY code @ node path: message"``; empty when clean.
    """
    return _run(
        loader.load_der_certificate,
        _certificate_validator(),
        der,
        "certificate",
        _threshold(include_warnings),
    )


def lint_crl(der: bytes, *, include_warnings: bool = False) -> list[str]:
    """Lint a DER CRL against pkilint's RFC 5280 profile (``lint_crl -p PKIX``).

    Args:
        der: the DER-encoded CRL.
        include_warnings: also report WARNING findings.

    Returns:
        The findings, as for :func:`lint_certificate`.
    """
    return _run(loader.load_der_crl, _crl_validator(), der, "crl", _threshold(include_warnings))


def lint_ocsp_response(
    der: bytes, *, include_warnings: bool = False, lint_certs: bool = True
) -> list[str]:
    """Lint a DER OCSP response against pkilint's RFC 6960 profile (``lint_ocsp_response``).

    pkilint's OCSP linter does not look inside the certificates that a response
    carries (a delegated responder's certificate), so by default each of them is
    linted as a certificate too and its findings are prefixed with ``certs[i]``.

    Args:
        der: the DER-encoded OCSP response, successful or not.
        include_warnings: also report WARNING findings.
        lint_certs: lint the certificates embedded in a successful response.

    Returns:
        The findings, as for :func:`lint_certificate`.
    """
    findings = _run(
        loader.load_der_ocsp_response,
        _ocsp_validator(),
        der,
        "ocsp_response",
        _threshold(include_warnings),
    )
    if lint_certs:
        for index, cert in enumerate(_embedded_certificates(der)):
            der_cert = cert.public_bytes(serialization.Encoding.DER)
            findings.extend(
                f"certs[{index}] {line}"
                for line in lint_certificate(der_cert, include_warnings=include_warnings)
            )
    return findings


def _embedded_certificates(der: bytes) -> Iterable[x509.Certificate]:
    try:
        response = x509_ocsp.load_der_ocsp_response(der)
    except ValueError:
        return []  # pkilint has already reported why it does not decode
    if response.response_status is not x509_ocsp.OCSPResponseStatus.SUCCESSFUL:
        return []
    return response.certificates


_LINTERS: dict[str, Callable[..., list[str]]] = {
    "certificate": lint_certificate,
    "crl": lint_crl,
    "ocsp_response": lint_ocsp_response,
}


def lint(kind: Kind, der: bytes, *, include_warnings: bool = False) -> list[str]:
    """Lint ``der`` as a ``kind`` document; see the ``lint_*`` functions.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    try:
        linter = _LINTERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown document kind {kind!r}; expected one of {sorted(_LINTERS)}"
        ) from None
    return linter(der, include_warnings=include_warnings)


def assert_lints_clean(kind: Kind, der: bytes, *, include_warnings: bool = False) -> None:
    """Fail the running test, listing the findings, unless pkilint finds nothing.

    Args:
        kind: ``"certificate"``, ``"crl"`` or ``"ocsp_response"``.
        der: the DER-encoded document.
        include_warnings: fail on WARNING findings too.
    """
    findings = lint(kind, der, include_warnings=include_warnings)
    if findings:
        listed = "\n  ".join(findings)
        pytest.fail(f"pkilint found problems in the {kind}:\n  {listed}", pytrace=False)
