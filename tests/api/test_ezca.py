"""The EZCA-compatible routes: exact field names, answer shapes, and issued certificates that lint."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import ALICE, make_csr
from fleetpki.pki.certtoken import make_certificate_token
from fleetpki.pki.keys import KeySpec
from support.api import Api, api_fixture  # noqa: F401 (a fixture)
from support.openssl import verify
from support.pkilint import assert_lints_clean


def _register(api: Api, device: str, token: str | None = None, owner: str = ALICE) -> None:
    body = {
        "CAID": api.ca_id,
        "TemplateID": api.template_id,
        "Domain": device,
        "Owners": [
            {"ObjectId": owner, "FriendlyName": "alice", "ObjectType": "User", "isValid": True}
        ],
        "Requesters": [{"ObjectId": owner, "FriendlyName": "alice"}],
    }
    answer = api.client.post(
        "/api/CA/RegisterNewDomain", json=body, headers=api.auth(token or api.alice)
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["Success"] is True


def _request_body(api: Api, device: str, csr: bytes, **extra: object) -> dict[str, object]:
    return {
        "SubjectName": f"CN={device}",
        "SubjectAltNames": [device],
        "CAID": api.ca_id,
        "TemplateID": api.template_id,
        "CSR": csr.decode(),
        "ValidityInDays": 10,
        "EKUs": ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"],
        "KeyUsages": ["Key Encipherment", "Digital Signature"],
        "SelectedLocation": "IoT Device",
        "ResourceID": "",
        "SecretName": "",
        "AKVName": "",
        "AutoRenew": False,
        "AutoRenewPercentage": 80,
        **extra,
    }


def _check_certificate(pem: str, api: Api, tmp_path: Path) -> x509.Certificate:
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert_lints_clean("certificate", cert.public_bytes(serialization.Encoding.DER))
    chain = api.fleet.cas.chain(api.ca_id)
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(pem)
    paths = []
    for index, c in enumerate(chain):
        path = tmp_path / f"ca{index}.pem"
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        paths.append(path)
    result = verify(leaf, *paths, purpose="sslclient")
    assert result.ok, result.output
    return cert


def test_available_cas_are_guids_with_ezca_fields(api: Api) -> None:
    answer = api.client.get("/api/CA/GetAvailableSSLCAs", headers=api.auth(api.alice))
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"Success", "Message"} and body["Success"] is True
    cas = json.loads(body["Message"])
    assert len(cas) == 1
    ca = cas[0]
    for key in (
        "CAID",
        "CAFriendlyName",
        "CATemplateType",
        "TemplateID",
        "KeyUsage",
        "MaxCertLifeDays",
        "DomainRestrictions",
        "CAKeyType",
        "CAHashing",
        "CAType",
        "CATier",
    ):
        assert key in ca
    uuid.UUID(ca["CAID"])
    uuid.UUID(ca["TemplateID"])
    assert ca["CAID"] == api.ca_id and isinstance(ca["MaxCertLifeDays"], int)


def test_register_domain_upserts_new_principals_and_lists_them(api: Api) -> None:
    newcomer = str(uuid.uuid4())
    device = str(uuid.uuid4())
    body = {
        "CAID": api.ca_id,
        "TemplateID": api.template_id,
        "Domain": device,
        "Owners": [{"ObjectId": ALICE, "FriendlyName": "alice"}],
        "Requesters": [{"ObjectId": newcomer, "FriendlyName": "factory line 7"}],
    }
    answer = api.client.post("/api/CA/RegisterNewDomain", json=body, headers=api.auth(api.alice))
    assert answer.status_code == 200, answer.text
    listed = api.client.get("/api/CA/GetMyDomains", headers=api.auth(api.alice)).json()
    domains = json.loads(listed["Message"])
    mine = next(d for d in domains if d["Domain"] == device)
    assert mine["IsOwner"] is True and mine["IsRequester"] is False
    assert mine["Requesters"][0]["ObjectId"] == newcomer
    assert mine["Requesters"][0]["FriendlyName"] == "factory line 7"
    assert mine["Owners"][0]["isValid"] is True
    uuid.UUID(mine["DomainID"])


def test_request_ssl_certificate_message_is_the_pem(api: Api, tmp_path: Path) -> None:
    device = str(uuid.uuid4())
    _register(api, device)
    _, csr = make_csr(device, spec=KeySpec.RSA_2048)
    answer = api.client.post(
        "/api/CA/RequestSSLCertificate",
        json=_request_body(api, device, csr),
        headers=api.auth(api.alice),
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["Success"] is True and body["Message"].startswith("-----BEGIN CERTIFICATE-----")
    cert = _check_certificate(body["Message"], api, tmp_path)
    assert cert.subject.rfc4514_string() == f"CN={device}"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=10) <= lifetime <= dt.timedelta(days=10, minutes=2)


def test_request_full_ssl_certificate_gives_the_chain(api: Api, tmp_path: Path) -> None:
    device = str(uuid.uuid4())
    _register(api, device)
    _, csr = make_csr(device)
    answer = api.client.post(
        "/api/CA/RequestFullSSLCertificate",
        json=_request_body(api, device, csr),
        headers=api.auth(api.alice),
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"CertificatePEM", "IssuingCACertificate", "RootCertificate"}
    _check_certificate(body["CertificatePEM"], api, tmp_path)
    issuing = x509.load_pem_x509_certificate(body["IssuingCACertificate"].encode())
    root = x509.load_pem_x509_certificate(body["RootCertificate"].encode())
    assert issuing.issuer == root.subject == root.issuer


def test_request_v2_with_typed_sans(api: Api, tmp_path: Path) -> None:
    _register(api, "sensor-9.fleet.example")
    _register(api, "10.0.0.9")
    _, csr = make_csr("sensor-9.fleet.example")
    body = _request_body(
        api,
        "sensor-9.fleet.example",
        csr,
        SubjectAltNames=[
            {"ValueSTR": "sensor-9.fleet.example", "SubjectAltType": 2},
            {"ValueSTR": "10.0.0.9", "SubjectAltType": 7},
        ],
    )
    answer = api.client.post(
        "/api/CA/RequestSSLCertificateV2", json=body, headers=api.auth(api.alice)
    )
    assert answer.status_code == 200, answer.text
    cert = _check_certificate(answer.json()["CertificatePEM"], api, tmp_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["sensor-9.fleet.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.9"]


def _issue(api: Api, device: str, spec: KeySpec = KeySpec.EC_P256) -> tuple[object, str]:
    _register(api, device)
    key, csr = make_csr(device, spec=spec)
    answer = api.client.post(
        "/api/CA/RequestSSLCertificate",
        json=_request_body(api, device, csr),
        headers=api.auth(api.alice),
    )
    assert answer.status_code == 200, answer.text
    return key, answer.json()["Message"]


def test_revoke_v2_by_thumbprint_and_paginated_listing(api: Api) -> None:
    _, pem = _issue(api, str(uuid.uuid4()))
    cert = x509.load_pem_x509_certificate(pem.encode())
    import hashlib

    thumb = hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    page = api.client.get(
        "/api/CA/GetMyCertificatesV2Paginated?pageNumber=0", headers=api.auth(api.alice)
    )
    infos = json.loads(page.json()["Message"])
    assert [i["Thumbprint"] for i in infos] == [thumb.upper()]
    assert infos[0]["Revoked"] is False and infos[0]["CanRevoke"] is True
    assert infos[0]["SubjectName"].startswith("CN=")
    empty = api.client.get(
        "/api/CA/GetMyCertificatesV2Paginated?pageNumber=1", headers=api.auth(api.alice)
    )
    assert json.loads(empty.json()["Message"]) == []
    answer = api.client.post(
        "/api/CA/RevokeCertificateV2",
        json={"CAID": api.ca_id, "TemplateID": api.template_id, "Thumbprint": thumb},
        headers=api.auth(api.alice),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["Success"] is True
    infos = json.loads(
        api.client.get(
            "/api/CA/GetMyCertificatesV2Paginated?pageNumber=0", headers=api.auth(api.alice)
        ).json()["Message"]
    )
    assert infos[0]["Revoked"] is True
    logs = api.client.post(
        "/api/Audit/GetCertLogs",
        json={
            "DateFrom": "2000-01-01T00:00:00Z",
            "DateTo": "2100-01-01T00:00:00Z",
            "MaxNumberOfRecords": 10,
            "PageNumber": 0,
        },
        headers=api.auth(api.alice),
    )
    assert logs.status_code == 200, logs.text
    actions = [e["Action"] for e in json.loads(logs.json()["Message"])]
    assert actions == ["certificate.revoke", "certificate.issue"]


@pytest.mark.parametrize(
    ("spec", "upper"),
    [
        (KeySpec.RSA_2048, True),
        (KeySpec.EC_P256, False),
        (KeySpec.EC_P384, True),
    ],
)
def test_renew_certificate_v2_with_certificate_token(
    api: Api, tmp_path: Path, spec: KeySpec, upper: bool
) -> None:
    device = str(uuid.uuid4())
    key, pem = _issue(api, device, spec)
    cert = x509.load_pem_x509_certificate(pem.encode())
    token = make_certificate_token(
        cert,
        key,
        audience=api.fleet.settings.certificate_token_audience,
        now=api.fleet.now(),  # type: ignore[arg-type]
    )
    if not upper:
        import jwt

        header = jwt.get_unverified_header(token)
        assert header["x5t"].isupper()
        token = jwt.encode(
            jwt.decode(token, options={"verify_signature": False}),
            key,  # type: ignore[arg-type]
            algorithm=header["alg"],
            headers={"typ": "JWT", "x5t": header["x5t"].lower()},
        )
    _, new_csr = make_csr(device, spec=spec)
    answer = api.client.post(
        "/api/Certificates/RenewCertificateV2",
        json={"Certificate": pem, "Payload": {"CSR": new_csr.decode(), "ValidityInDays": 5}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    chain = x509.load_pem_x509_certificates(answer.text.encode())
    assert len(chain) == 2
    renewed = chain[0]
    assert renewed.subject == cert.subject and renewed.serial_number != cert.serial_number
    _check_certificate(renewed.public_bytes(serialization.Encoding.PEM).decode(), api, tmp_path)


def test_device_revokes_its_own_certificate_with_a_token(api: Api) -> None:
    key, pem = _issue(api, str(uuid.uuid4()))
    cert = x509.load_pem_x509_certificate(pem.encode())
    token = make_certificate_token(
        cert,
        key,
        audience=api.fleet.settings.certificate_token_audience,
        now=api.fleet.now(),  # type: ignore[arg-type]
    )
    answer = api.client.get(
        "/api/Certificates/RevokeCertificate", headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["Success"] is True
    again = api.client.get(
        "/api/Certificates/RevokeCertificate", headers={"Authorization": f"Bearer {token}"}
    )
    assert again.status_code == 401
    assert again.json()["code"] in {"certtoken.replayed", "certificate.revoked"}
    assert again.json()["Success"] is False
