"""Key custody (issue 14 item 4): scrypt key files, their migration, the passphrase outside the home.

Real peers: ``openssl`` reads the key files fleetpki writes and writes scrypt files
fleetpki reads; ``fleetpki init`` and ``fleetpki serve`` run as subprocesses.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetpki.application import FleetPKI, init_home
from fleetpki.errors import FleetPKIError
from fleetpki.keystore import FileKeyStore, PassphraseOrigin, find_passphrase, load_key_file
from fleetpki.keystore.passphrase import CREDENTIAL_NAME, PASSPHRASE_ENV
from fleetpki.keystore.pkcs8 import (
    SCRYPT_COST,
    ScryptCost,
    encrypt_private_key,
    protection_of,
)
from fleetpki.pki.keys import KeySpec
from fleetpki.services import Actor
from fleetpki.services.certificates import IssueCommand
from fleetpki.settings import Settings
from support.openssl import openssl

PASSPHRASE = b"correct horse battery staple"


def _old_form(key: ec.EllipticCurvePrivateKey, passphrase: bytes = PASSPHRASE) -> bytes:
    """A key as fleetpki wrote it before issue 14: PBES2 with PBKDF2 at 2,048 iterations."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _reencryptions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "fleetpki.keystore" and "re-encrypted" in r.getMessage()
    ]


# --------------------------------------------------------------------------- the file format


def test_a_new_key_file_is_scrypt_at_the_owasp_cost_and_openssl_opens_it(tmp_path: Path) -> None:
    keystore = FileKeyStore(tmp_path / "keys", PASSPHRASE)
    signer = keystore.generate(KeySpec.EC_P256)
    [path] = (tmp_path / "keys").iterdir()
    assert _mode(path) == 0o600 and _mode(tmp_path / "keys") == 0o700
    parsed = openssl("asn1parse", "-in", path)
    assert parsed.returncode == 0, parsed.stderr
    assert ":PBES2" in parsed.stdout and ":scrypt" in parsed.stdout
    assert ":aes-256-cbc" in parsed.stdout and "PBKDF2" not in parsed.stdout
    assert protection_of(path.read_bytes()).scrypt == SCRYPT_COST == ScryptCost(2**14, 8, 5)
    assert protection_of(path.read_bytes()).current
    opened = openssl("pkey", "-in", path, "-passin", f"pass:{PASSPHRASE.decode()}", "-pubout")
    assert opened.returncode == 0, opened.stderr
    ours = signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert opened.stdout.encode() == ours
    wrong = openssl("pkey", "-in", path, "-passin", "pass:wrong", "-noout")
    assert wrong.returncode != 0


def test_an_openssl_scrypt_key_is_read_and_one_below_the_cost_is_upgraded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = tmp_path / "plain.pem"
    made = openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", plain
    )
    assert made.returncode == 0, made.stderr
    # openssl's own scrypt default (N=16384, r=8, p=1) is a fifth of today's cost.
    path = tmp_path / "keys" / "openssl.pem"
    path.parent.mkdir()
    converted = openssl(
        "pkcs8", "-topk8", "-scrypt", "-in", plain, "-out", path,
        "-passout", f"pass:{PASSPHRASE.decode()}",
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    assert protection_of(path.read_bytes()).scrypt == ScryptCost(2**14, 8, 1)
    with caplog.at_level(logging.WARNING, logger="fleetpki.keystore"):
        key = load_key_file(path, PASSPHRASE)
    original = serialization.load_pem_private_key(plain.read_bytes(), password=None)
    assert key.private_numbers() == original.private_numbers()  # type: ignore[union-attr]
    assert protection_of(path.read_bytes()).scrypt == SCRYPT_COST
    [line] = _reencryptions(caplog)
    assert "scrypt N=16384, r=8, p=1" in line and "scrypt N=16384, r=8, p=5" in line


# --------------------------------------------------------------------------- migration


def test_an_old_pbkdf2_key_is_re_encrypted_once_on_load_atomically(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    path = keys / "old.pem"
    path.write_bytes(_old_form(key))
    path.chmod(0o600)
    before = protection_of(path.read_bytes())
    assert before.description == "PBKDF2 (HMAC-SHA256) with 2048 iterations"
    assert not before.current
    inode = path.stat().st_ino

    with caplog.at_level(logging.WARNING, logger="fleetpki.keystore"):
        signer = FileKeyStore(keys, PASSPHRASE).signer("file:old.pem")
        FileKeyStore(keys, PASSPHRASE).signer("file:old.pem")  # a second process, later
    assert signer.public_key() == key.public_key()
    after = protection_of(path.read_bytes())
    assert after.current and after.scrypt == SCRYPT_COST
    assert path.stat().st_ino != inode  # renamed over, not rewritten in place
    assert _mode(path) == 0o600
    assert sorted(p.name for p in keys.iterdir()) == ["old.pem"]  # no temporary left
    [line] = _reencryptions(caplog)
    assert str(path) in line and "2048 iterations" in line and "scrypt N=16384" in line
    # The old passphrase still opens it: only the key derivation changed.
    assert (
        openssl("pkey", "-in", path, "-passin", f"pass:{PASSPHRASE.decode()}", "-noout").returncode
        == 0
    )


def test_two_loaders_at_once_re_encrypt_an_old_key_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    (keys / "old.pem").write_bytes(_old_form(key))
    start = threading.Barrier(4)
    loaded: list[bool] = []

    def load() -> None:
        start.wait()
        signer = FileKeyStore(keys, PASSPHRASE).signer("file:old.pem")
        loaded.append(signer.public_key() == key.public_key())

    with caplog.at_level(logging.WARNING, logger="fleetpki.keystore"):
        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert loaded == [True] * 4
    assert len(_reencryptions(caplog)) == 1
    assert protection_of((keys / "old.pem").read_bytes()).current


def test_a_wrong_passphrase_leaves_an_old_key_untouched(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    old = _old_form(ec.generate_private_key(ec.SECP256R1()))
    (keys / "old.pem").write_bytes(old)
    with pytest.raises(FleetPKIError) as caught:
        FileKeyStore(keys, b"not it").signer("file:old.pem")
    assert caught.value.code == "keystore.bad_passphrase"
    assert (keys / "old.pem").read_bytes() == old


def test_an_old_home_is_migrated_on_first_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.default_for(tmp_path / "home").with_changes(token_endpoint_enabled=True)
    made = init_home(settings)
    settings, secret = made.app.settings, made.app.key_passphrase()
    made.app.token_issuer.jwks(made.app.token_issuer.tenant_id)  # makes the signing key
    made.app.close()
    # Put every key back in the form of a home made before issue 14.
    files = [*settings.keys_dir.iterdir(), settings.home / "token-signing-key.pem"]
    for path in files:
        key = load_key_file(path, secret)
        path.write_bytes(_old_form(key, secret))  # type: ignore[arg-type]
        assert not protection_of(path.read_bytes()).current

    with caplog.at_level(logging.WARNING, logger="fleetpki.keystore"):
        fleet = FleetPKI.open(settings)
        try:
            fleet.cas.check_keys()
            fleet.token_issuer.jwks(fleet.token_issuer.tenant_id)
            issuer, admin = fleet.cas.current_issuer(), Actor.local_admin()
            fleet.domains.register(
                admin,
                ca_id=issuer.id,
                template_id=None,
                name="migrated-device",
                owners=[admin.principal_id],
                requesters=[admin.principal_id],
            )
            _, csr = _csr("migrated-device")
            issued = fleet.certificates.issue(admin, IssueCommand(ca_id=issuer.id, csr=csr))
            issued.issued.certificate.verify_directly_issued_by(issuer.certificate)
        finally:
            fleet.close()
    assert all(protection_of(path.read_bytes()).current for path in files)
    lines = _reencryptions(caplog)
    assert len(lines) == len(files) == 3
    assert any("token signing key" in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fleetpki.keystore"):
        again = FleetPKI.open(settings)
        again.cas.check_keys()
        again.close()
    assert _reencryptions(caplog) == []


def _csr(cn: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    from conftest import make_csr

    key, csr = make_csr(cn)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, csr


def test_encrypt_private_key_takes_a_weaker_cost_only_when_asked() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    weak = encrypt_private_key(key, PASSPHRASE, cost=ScryptCost(2**10, 8, 1))
    assert not protection_of(weak).current
    assert protection_of(encrypt_private_key(key, PASSPHRASE)).current


# --------------------------------------------------------------------------- the passphrase


def test_init_keeps_the_passphrase_outside_the_home_and_names_it_in_the_config(
    tmp_path: Path, passphrase_folder: Path
) -> None:
    home = tmp_path / "home"
    made = init_home(Settings.default_for(home))
    made.app.close()
    source = made.passphrase.source
    assert source.origin is PassphraseOrigin.FILE and source.path is not None
    assert source.path.parent == passphrase_folder / "fleetpki"
    assert not source.inside(home)
    assert _mode(source.path) == 0o600 and _mode(source.path.parent) == 0o700
    saved = Settings.load(home)
    assert saved.key_passphrase_file == str(source.path)
    assert not (home / "key-passphrase").exists()
    assert (
        find_passphrase(home, saved.key_passphrase_file).secret == source.path.read_bytes().strip()
    )
    assert made.passphrase.warnings(home) == []
    # Nothing in the home holds it.
    secret = made.passphrase.secret
    assert not [f for f in home.rglob("*") if f.is_file() and secret in f.read_bytes()]


def test_the_environment_and_a_systemd_credential_win_and_nothing_is_written(
    tmp_path: Path, passphrase_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = set(passphrase_folder.rglob("*"))
    monkeypatch.setenv(PASSPHRASE_ENV, "from the environment")
    made = init_home(Settings.default_for(tmp_path / "env-home"))
    made.app.close()
    assert made.passphrase.source.origin is PassphraseOrigin.ENVIRONMENT
    assert Settings.load(tmp_path / "env-home").key_passphrase_file == ""
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(FleetPKIError) as caught:
        FleetPKI.open(Settings.load(tmp_path / "env-home"))
    assert caught.value.code == "keystore.passphrase_missing"
    assert PASSPHRASE_ENV in caught.value.message

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / CREDENTIAL_NAME).write_text("from the environment\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    fleet = FleetPKI.open(Settings.load(tmp_path / "env-home"))
    try:
        fleet.cas.check_keys()
        found = fleet.key_passphrase.get()
        assert found.source.origin is PassphraseOrigin.CREDENTIAL
        assert CREDENTIAL_NAME in found.source.describe()
        assert found.warnings(tmp_path / "env-home") == []
    finally:
        fleet.close()
    assert set(passphrase_folder.rglob("*")) == before
    assert not (tmp_path / "env-home" / "key-passphrase").exists()


def test_a_provisioned_passphrase_file_is_used_as_it_is(tmp_path: Path) -> None:
    provisioned = tmp_path / "etc" / "passphrase"
    provisioned.parent.mkdir()
    provisioned.write_text("provisioned by the operator\n")
    provisioned.chmod(0o600)
    settings = Settings.default_for(tmp_path / "home").with_changes(
        key_passphrase_file=str(provisioned)
    )
    made = init_home(settings)
    made.app.close()
    assert made.passphrase.source.path == provisioned
    assert made.passphrase.secret == b"provisioned by the operator"
    [key] = list(settings.keys_dir.iterdir())[:1]
    load_key_file(key, b"provisioned by the operator")


def test_a_legacy_home_still_opens_and_is_warned_about(tmp_path: Path) -> None:
    home = tmp_path / "home"
    made = init_home(Settings.default_for(home))
    made.app.close()
    outside = Path(Settings.load(home).key_passphrase_file)
    # A home made before issue 14: the passphrase in the home, no key_passphrase_file.
    (home / "key-passphrase").write_bytes(outside.read_bytes())
    (home / "key-passphrase").chmod(0o644)
    outside.unlink()
    Settings.load(home).with_changes(key_passphrase_file="").save()
    fleet = FleetPKI.open(Settings.load(home))
    try:
        fleet.cas.check_keys()
        warnings = fleet.key_passphrase.get().warnings(home)
    finally:
        fleet.close()
    assert len(warnings) == 2
    assert "inside the home" in warnings[0] and "key_passphrase_file" in warnings[0]
    assert "mode 0644" in warnings[1]


def test_a_missing_configured_passphrase_file_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    made = init_home(Settings.default_for(home))
    made.app.close()
    configured = Path(Settings.load(home).key_passphrase_file)
    configured.unlink()
    with pytest.raises(FleetPKIError) as caught:
        FleetPKI.open(Settings.load(home))
    assert caught.value.code == "keystore.passphrase_missing"
    assert str(configured) in caught.value.message


# --------------------------------------------------------------------------- the CLI


def _fleetpki(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetpki", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_init_says_where_the_passphrase_is_and_serve_warns_when_it_is_in_the_home(
    tmp_path: Path, passphrase_folder: Path
) -> None:
    env = {**os.environ, "FLEETPKI_HOME": str(tmp_path / "home"), "COLUMNS": "300"}
    env.pop(PASSPHRASE_ENV, None)
    done = _fleetpki("init", env=env)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if "passphrase" in line]
    path = Path(line.split()[1])
    assert path.parent == passphrase_folder / "fleetpki" and path.exists()
    assert "apart from the home" in line

    env["FLEETPKI_HOME"] = str(tmp_path / "home2")
    done = _fleetpki("init", "--key-passphrase-file", str(tmp_path / "home2" / "secret"), env=env)
    assert done.returncode == 0, done.stderr
    assert "inside the home" in " ".join(done.stderr.split())  # init warns too

    # serve warns, then stops on a port that is taken (so the test needs no shutdown).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        served = _fleetpki(
            "serve", "--only", "hub", "--mqtt-port", port, "--amqp-port", "-1", env=env
        )
        quiet = _fleetpki(
            "serve", "--only", "hub", "--mqtt-port", port, "--amqp-port", "-1",
            env={**env, "FLEETPKI_HOME": str(tmp_path / "home")},
        )  # fmt: skip
    assert served.returncode == 1 and "serve.port_in_use" in served.stderr
    warning = " ".join(served.stderr.split())
    assert "warning: the key passphrase is in" in warning and "inside the home" in warning
    assert quiet.returncode == 1 and "warning: the key passphrase" not in quiet.stderr
    for output in (served.stdout + served.stderr, quiet.stdout + quiet.stderr):
        assert path.read_text().strip() not in output  # the passphrase is never printed


# --------------------------------------------------------------------------- database files


def test_the_sqlite_files_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        made = init_home(Settings.default_for(tmp_path / "home"))
        fleet = made.app
        try:
            fleet.principals.create_token(
                Actor.local_admin(), "00000000-0000-0000-0000-000000000001"
            )
            files = sorted((tmp_path / "home").glob("fleetpki.db*"))
            assert [f.name for f in files] == [
                "fleetpki.db",
                "fleetpki.db-shm",
                "fleetpki.db-wal",
                "fleetpki.db-writer.lock",
            ]
            assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        finally:
            fleet.close()
        # A home whose files were made under the umask is put right when it is opened.
        for f in (tmp_path / "home").glob("fleetpki.db*"):
            f.chmod(0o644)
        reopened = FleetPKI.open(Settings.load(tmp_path / "home"))
        reopened.store.ping()
        reopened.close()
        assert {_mode(f) for f in (tmp_path / "home").glob("fleetpki.db*")} == {0o600}
    finally:
        os.umask(old_umask)
