"""PEM text (RFC 7468) of DER bytes, without parsing them.

A stored certificate is DER; showing it as PEM through ``cryptography`` parses it first
(``load_der_x509_certificate``, then ``public_bytes``), which on the issuance answer
cost more than the encoding. RFC 7468's strict form, as OpenSSL and ``cryptography``
write it: base64 in lines of 64 characters between the labelled lines, with a final
newline.
"""

from __future__ import annotations

import base64

__all__ = ["pem_text"]

_LINE = 64


def pem_text(der: bytes, label: str = "CERTIFICATE") -> str:
    """``der`` as PEM text with ``label`` (``CERTIFICATE``, ``ENCRYPTED PRIVATE KEY``...)."""
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + _LINE] for i in range(0, len(body), _LINE)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""])
