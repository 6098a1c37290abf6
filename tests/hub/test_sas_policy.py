"""Symmetric-key devices in the pure policy: SAS tokens checked as Azure checks them (ref §3.1)."""

from __future__ import annotations

import base64
import datetime as dt
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetpki.errors import AuthenticationError
from fleetpki.hub.azure.sas import (
    SasToken,
    SasTokenMalformed,
    device_resource_uri,
    generate_key,
    is_valid_key,
    key_id,
    make_device_token,
    sign,
)
from fleetpki.hub.policy import (
    AuthType,
    DevicePolicy,
    DeviceStatus,
    PresentedToken,
    Refusal,
    RegistryEntry,
)

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
LATER = int(NOW.timestamp()) + 3600
PRIMARY, SECONDARY, OTHER = generate_key(), generate_key(), generate_key()
HOST = "hub.example.net"
URI = device_resource_uri(HOST, "dev-1")


def _entry(
    status: DeviceStatus = DeviceStatus.ENABLED, auth: AuthType = AuthType.SAS
) -> RegistryEntry:
    keys = (PRIMARY, SECONDARY) if auth is AuthType.SAS else ()
    return RegistryEntry("dev-1", status, auth, symmetric_keys=keys)


def _token(uri: str = URI, key: str = PRIMARY, expiry: int = LATER) -> str:
    return make_device_token(uri, key, expiry)


def _admit(token: str, entry: RegistryEntry | None = None, client_id: str = "dev-1") -> None:
    presented = PresentedToken(token, client_id, HOST)
    DevicePolicy().admit_token(presented, entry or _entry(), NOW)


def test_a_token_signed_with_either_key_authenticates_and_carries_its_expiry() -> None:
    for index, key in enumerate((PRIMARY, SECONDARY)):
        device = DevicePolicy().admit_token(
            PresentedToken(_token(key=key), "dev-1", HOST), _entry(), NOW
        )
        assert (device.device_id, device.module_id, device.auth_type) == (
            "dev-1",
            None,
            AuthType.SAS,
        )
        assert device.key_id == key_id(_entry().symmetric_keys[index])
        assert device.expires_at == dt.datetime.fromtimestamp(LATER, dt.UTC)
        assert (device.certificate_sha1, device.certificate_serial) == (None, None)


def test_the_device_sdk_token_form_is_what_is_checked() -> None:
    # azure-iot-device's RenewableSasToken: quote(uri, safe=""), quote(b64(hmac), safe="").
    encoded = quote(URI, safe="")
    signature = quote(base64.b64encode(sign(encoded, LATER, PRIMARY)).decode(), safe="")
    token = f"SharedAccessSignature sr={encoded}&sig={signature}&se={LATER}"
    assert token == _token()
    assert encoded == "hub.example.net%2Fdevices%2Fdev-1"


@pytest.mark.parametrize(
    "uri",
    [
        HOST,  # a prefix by whole segments grants what is under it
        f"{HOST}/devices",
        f"{HOST.upper()}/devices/dev-1",  # the documented lower-case form matches too
        f"{HOST}:8883/devices/dev-1",
    ],
)
def test_resource_uris_that_grant_the_device(uri: str) -> None:
    _admit(_token(uri=uri))


def test_a_signature_over_the_lower_cased_resource_is_accepted() -> None:
    encoded = quote(URI, safe="").lower()  # %2f, as Microsoft's documentation asks
    signature = quote(base64.b64encode(sign(encoded, LATER, PRIMARY)).decode(), safe="")
    _admit(f"SharedAccessSignature sr={quote(URI, safe='')}&sig={signature}&se={LATER}")


def _policy_token() -> str:
    return _token() + "&skn=device"


@pytest.mark.parametrize(
    ("token", "entry", "client_id", "code"),
    [
        ("not a token", None, "dev-1", "hub.sas_malformed"),
        ("SharedAccessSignature sr=x&se=1", None, "dev-1", "hub.sas_malformed"),
        (_token() + "&sr=again", None, "dev-1", "hub.sas_malformed"),
        (_token() + "&extra=1", None, "dev-1", "hub.sas_malformed"),
        (_token().replace(f"se={LATER}", "se=soon"), None, "dev-1", "hub.sas_malformed"),
        ("SharedAccessSignature sr=a&sig=%%%&se=1", None, "dev-1", "hub.sas_malformed"),
        (_token(), _entry(DeviceStatus.DISABLED), "dev-1", "hub.device_disabled"),
        (_token(), _entry(auth=AuthType.CERTIFICATE_AUTHORITY), "dev-1", "hub.wrong_auth_type"),
        (_token(), _entry(auth=AuthType.SELF_SIGNED), "dev-1", "hub.wrong_auth_type"),
        (_token(f"{URI}/modules/m"), None, "dev-1/m", "hub.sas_module"),
        (_policy_token(), None, "dev-1", "hub.sas_policy_token"),
        # A token for another device, signed with that device's key or with this one's.
        (
            _token(device_resource_uri(HOST, "dev-2"), OTHER),
            None,
            "dev-1",
            "hub.sas_wrong_resource",
        ),
        (_token(device_resource_uri(HOST, "dev-2")), None, "dev-1", "hub.sas_wrong_resource"),
        (_token(device_resource_uri(HOST, "dev-1x")), None, "dev-1", "hub.sas_wrong_resource"),
        (
            _token(device_resource_uri("other.example.net", "dev-1")),
            None,
            "dev-1",
            "hub.sas_wrong_resource",
        ),
        (_token(f"{URI}/modules/m"), None, "dev-1", "hub.sas_wrong_resource"),
        (_token(expiry=int(NOW.timestamp())), None, "dev-1", "hub.sas_expired"),
        (_token(expiry=int(NOW.timestamp()) - 60), None, "dev-1", "hub.sas_expired"),
        (_token(key=OTHER), None, "dev-1", "hub.sas_bad_signature"),
        (
            _token().replace(f"se={LATER}", f"se={LATER + 1}"),
            None,
            "dev-1",
            "hub.sas_bad_signature",
        ),
    ],
)
def test_token_refusals(token: str, entry: RegistryEntry | None, client_id: str, code: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        _admit(token, entry, client_id)
    assert info.value.code == code
    assert info.value.code in {refusal.code for refusal in Refusal}


def test_an_unregistered_device_is_unknown() -> None:
    with pytest.raises(AuthenticationError) as info:
        DevicePolicy().admit_token(PresentedToken(_token(), "dev-1", HOST), None, NOW)
    assert info.value.code == "hub.unknown_device"


def test_a_sas_device_has_no_certificate_path() -> None:
    from fleetpki.hub.policy import PresentedCertificate, TrustedCAs
    from support.hub_control import ForeignCA

    leaf = ForeignCA("SAS CA").sign("dev-1")
    with pytest.raises(AuthenticationError) as info:
        DevicePolicy().admit(PresentedCertificate(leaf, (), "dev-1"), _entry(), TrustedCAs(()), NOW)
    assert info.value.code == "hub.wrong_auth_type"


def test_secrets_stay_out_of_reprs() -> None:
    token = _token()
    assert PRIMARY not in repr(_entry())
    assert token not in repr(PresentedToken(token, "dev-1", HOST))


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        (generate_key(), True),
        (base64.b64encode(b"k" * 16).decode(), True),
        (base64.b64encode(b"k" * 64).decode(), True),
        (base64.b64encode(b"k" * 15).decode(), False),
        (base64.b64encode(b"k" * 65).decode(), False),
        ("not base64!", False),
        ("", False),
    ],
    ids=["generated", "16-bytes", "64-bytes", "15-bytes", "65-bytes", "not-base64", "empty"],
)
def test_key_bounds_are_azures(key: str, valid: bool) -> None:
    assert is_valid_key(key) is valid


@given(st.text(max_size=300))
def test_the_parser_takes_any_text(text: str) -> None:
    try:
        token = SasToken.parse(text)
    except SasTokenMalformed:
        return
    assert token.resource and token.expiry >= 0


@given(
    st.text(
        alphabet=st.characters(codec="ascii", categories=("L", "N")) | st.sampled_from("-.+%_"),
        min_size=1,
        max_size=40,
    ),
    st.integers(min_value=1, max_value=2**40),
)
def test_a_made_token_parses_verifies_and_grants_its_uri(device_id: str, expiry: int) -> None:
    uri = device_resource_uri(HOST, device_id)
    token = SasToken.parse(make_device_token(uri, PRIMARY, expiry))
    assert token.resource_uri == uri
    assert token.signed_by((OTHER, PRIMARY)) == 1
    assert token.grants(uri)
    assert token.key_name is None
