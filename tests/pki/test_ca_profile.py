"""CA certificates from `init`, for every CA key type: RFC 5280-clean and verifiable by openssl."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.application import init_home
from fleetpki.pki.keys import CA_KEY_SPECS, KeySpec
from fleetpki.services.authority import HierarchySpec
from fleetpki.settings import Settings
from support.openssl import verify
from support.pkilint import assert_lints_clean


@pytest.mark.parametrize("spec", sorted(CA_KEY_SPECS, key=lambda s: s.value), ids=lambda s: s.value)
def test_hierarchy_of_each_key_type_lints_clean(
    spec: KeySpec, tmp_path: Path, key_passphrase: None
) -> None:
    result = init_home(
        Settings.default_for(tmp_path / "home"), HierarchySpec(root_key=spec, issuing_key=spec)
    )
    try:
        issuing, root = result.app.cas.chain(result.issuing.id)
    finally:
        result.app.close()
    for cert in (root, issuing):
        assert_lints_clean("certificate", cert.public_bytes(serialization.Encoding.DER))
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical
        assert constraints.value.ca
    assert issuing.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    (tmp_path / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "issuing.pem").write_bytes(issuing.public_bytes(serialization.Encoding.PEM))
    result_check = verify(tmp_path / "issuing.pem", tmp_path / "root.pem")
    assert result_check.ok, result_check.output
