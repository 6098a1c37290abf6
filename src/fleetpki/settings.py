"""Settings: one immutable object built at the entry point and passed down.

A fleetpki *home* is a folder holding ``config.toml``, the SQLite database (by
default) and the encrypted CA key files; the key passphrase is kept outside it
(``key_passphrase_file``, :mod:`fleetpki.keystore.passphrase`).  Nothing reads the
configuration at import time.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from fleetpki.errors import NotFoundError, ValidationError

__all__ = [
    "AZURE_AMQP_PORT",
    "AZURE_HTTPS_PORT",
    "AZURE_MQTT_PORT",
    "CONFIG_FILE",
    "DEFAULT_API_PORT",
    "DEFAULT_HOST",
    "DEFAULT_MQTT_PORT",
    "DEFAULT_PKCS11_MODULE",
    "HOME_ENV",
    "KEYSTORES",
    "PKCS11_PIN_ENV",
    "Settings",
    "resolve_home",
]

HOME_ENV = "FLEETPKI_HOME"
CONFIG_FILE = "config.toml"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8443
DEFAULT_MQTT_PORT = 8883
#: The ports the unmodified Azure SDKs dial, which no option of theirs changes (ref §0):
#: MQTT over TLS, HTTPS (MQTT and AMQP over WebSockets, the service REST API), AMQP.
AZURE_MQTT_PORT = 8883
#: Where the Azure service SDKs dial AMQP over TLS (send_c2d_message, azure-eventhub).
AZURE_AMQP_PORT = 5671
AZURE_HTTPS_PORT = 443
AZURE_AMQP_PORT = 5671
#: Where Debian's ``softhsm2`` package installs the SoftHSM2 PKCS#11 module.
DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
#: Environment variable holding the PKCS#11 token's user PIN (wins over a PIN file).
PKCS11_PIN_ENV = "FLEETPKI_PKCS11_PIN"
#: The keystore backends: encrypted key files (the default) or a PKCS#11 token.
KEYSTORES = ("file", "pkcs11")


def resolve_home(home: Path | str | None) -> Path:
    """The home folder: the argument, else ``$FLEETPKI_HOME``, else ``~/.fleetpki``."""
    if home:
        return Path(home).expanduser().resolve()
    from_env = os.environ.get(HOME_ENV)
    if from_env:
        return Path(from_env).expanduser().resolve()
    return (Path.home() / ".fleetpki").resolve()


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything fleetpki needs to know to run.

    Attributes:
        home: the home folder.
        database_url: SQLAlchemy URL; SQLite in the home by default.
        public_url: base URL put into certificates (CRL DP, OCSP, caIssuers) and the
            audience of certificate tokens.  Use an IP or a fully qualified name.
        host / api_port / mqtt_port: where ``fleetpki serve`` listens.
        amqp_port: the hub's AMQP 1.0 over TLS port (cloud-to-device sends, feedback,
            the Event Hubs-compatible endpoint); -1 turns it off.
        hub_route_twin_change_events: route twin change events to the built-in
            endpoint, as an Azure route for that data source does (off, as on a new
            Azure hub).
        hub_route_connection_state_events: route device connection state events
            (deviceConnected, deviceDisconnected) to the built-in endpoint, likewise.
        hostname: the server's DNS name for its TLS certificate and the hub.
        oidc_issuer / oidc_audience / oidc_jwks: optional OIDC (Entra ID) JWT checking.
        token_audience: overrides ``public_url`` as the certificate-token audience.
        hub_revocation_soft_fail: accept devices of foreign CAs whose revocation
            status cannot be established (default: refuse them).
        hub_node: this hub node's name; every hub process sharing one database needs
            its own, since each node gets its own delivery of every revocation.
        arm_subscription_id / arm_resource_group / arm_hub_name: the Azure resource path
            under which the built-in hub answers Azure's management API (empty: derived
            from the home and the hostname, see ``services.hub_management``).
        token_endpoint_enabled / token_tenant_id: serve the client-credentials token
            endpoint that azure-identity's ClientSecretCredential calls (off by default).
        key_passphrase_file: the file holding the key passphrase, outside the home
            (``fleetpki init`` makes it); ``$FLEETPKI_KEY_PASSPHRASE`` and the systemd
            credential ``fleetpki-key-passphrase`` win over it; empty: ``HOME/key-passphrase``,
            where homes made before issue 14 keep it.
        keystore: where CA keys are kept: ``file`` (encrypted PKCS#8 files in the home)
            or ``pkcs11`` (generated in, and never leaving, a PKCS#11 token).
        ca_rekey_after_days: a CA renewal makes a new key by default once the current key
            is this many days old.
        ca_auto_renew_at: the fraction of a CA generation's lifetime after which
            ``fleetpki serve`` renews the CA by itself (``0.8``: at 80 %); 0, the
            default, turns automatic renewal off.
        ca_link_deadline_hours: how long a renewed CA generation may wait for a hub link
            before it is reported as overdue (log, metric, ``fleetpki ca show``).
        pkcs11_module / pkcs11_token / pkcs11_pin_file: the PKCS#11 module's path, the
            token's label, and a file holding the user PIN (``$FLEETPKI_PKCS11_PIN``
            wins; the PIN is never written to the configuration).
        renewal_grace_seconds: how long a renewed certificate stays valid beside its
            successor before the server's housekeeping revokes it (reason superseded).
        outbox_retention_days: how long an event that every consumer has received is
            kept in the outbox before the server's housekeeping deletes it.
        tls_handshake_timeout_seconds: how long a client of either port may take to
            complete its TLS handshake.
        http_header_timeout_seconds: how long an API client may take to send a
            request's headers, from the connection's start or the previous response.
        api_max_connections / mqtt_max_connections: open connections allowed at once
            on each port, TLS handshakes included; more are closed at once, and logged.
        portal_oidc_client_id / portal_oidc_client_secret_file / portal_oidc_scopes: the
            portal's OIDC client at ``oidc_issuer`` (authorization code with PKCE); no
            client id turns OIDC sign-in off. The secret file is for confidential
            clients only.
        portal_session_hours: how long a portal session lasts from sign-in.
        sqlite_busy_timeout_seconds: on SQLite, how long a write waits for a lock held
            by another process before it fails with ``database.unavailable`` (503).
        database_start_wait_seconds: how long ``fleetpki serve`` (and each of its
            workers) keeps trying, with backoff, to reach a PostgreSQL server that does
            not answer when it starts, before it exits 1 (0: one try; SQLite: one try).
        provisioning_id_scope: the provisioning service's ID scope (empty: ``0ne`` and
            eight hex digits derived from the home, fixed across restarts); give every
            node sharing one database the same one.
        provisioning_register_interval_seconds: a registration id may register once in
            this many seconds; a sooner registration is answered 429 with retry-after
            (0 turns the limit off).
    """

    home: Path
    database_url: str
    public_url: str = f"https://{DEFAULT_HOST}:{DEFAULT_API_PORT}"
    host: str = DEFAULT_HOST
    api_port: int = DEFAULT_API_PORT
    mqtt_port: int = DEFAULT_MQTT_PORT
    amqp_port: int = AZURE_AMQP_PORT
    hub_route_twin_change_events: bool = False
    hub_route_connection_state_events: bool = False
    hostname: str = "localhost"
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_jwks: str = ""
    token_audience: str = ""
    hub_revocation_soft_fail: bool = False
    hub_node: str = "builtin"
    arm_subscription_id: str = ""
    arm_resource_group: str = "fleetpki"
    arm_hub_name: str = ""
    token_endpoint_enabled: bool = False
    token_tenant_id: str = ""
    key_passphrase_file: str = ""
    keystore: str = "file"
    ca_rekey_after_days: int = 365
    ca_auto_renew_at: float = 0.0
    ca_link_deadline_hours: int = 24
    pkcs11_module: str = DEFAULT_PKCS11_MODULE
    pkcs11_token: str = ""
    pkcs11_pin_file: str = ""
    renewal_grace_seconds: int = 86400
    outbox_retention_days: int = 30
    tls_handshake_timeout_seconds: int = 10
    http_header_timeout_seconds: int = 10
    api_max_connections: int = 1000
    mqtt_max_connections: int = 20000
    portal_oidc_client_id: str = ""
    portal_oidc_client_secret_file: str = ""
    portal_oidc_scopes: str = "openid profile"
    portal_session_hours: int = 8
    sqlite_busy_timeout_seconds: float = 10.0
    database_start_wait_seconds: float = 60.0
    provisioning_id_scope: str = ""
    provisioning_register_interval_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.keystore not in KEYSTORES:
            raise ValidationError(
                "config.invalid",
                f"keystore must be one of {', '.join(KEYSTORES)}, not {self.keystore!r}",
            )
        auto = self.ca_auto_renew_at
        if isinstance(auto, bool) or not isinstance(auto, int | float) or not 0 <= auto < 1:
            raise ValidationError(
                "config.invalid",
                f"ca_auto_renew_at must be a fraction from 0 (off) to below 1, not {auto!r}",
            )
        busy = self.sqlite_busy_timeout_seconds
        if isinstance(busy, bool) or not isinstance(busy, int | float) or not 0 < busy <= 3600:
            raise ValidationError(
                "config.invalid",
                f"sqlite_busy_timeout_seconds must be above 0 and at most 3600, not {busy!r}",
            )
        wait = self.database_start_wait_seconds
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 3600:
            raise ValidationError(
                "config.invalid",
                f"database_start_wait_seconds must be from 0 to 3600, not {wait!r}",
            )
        interval = self.provisioning_register_interval_seconds
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0:
            raise ValidationError(
                "config.invalid",
                "provisioning_register_interval_seconds must be a number of seconds, 0 or "
                f"more, not {interval!r}",
            )
        scope = self.provisioning_id_scope
        if scope and (
            len(scope) > 64 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in scope)
        ):
            raise ValidationError(
                "config.invalid",
                f"provisioning_id_scope must be up to 64 letters, digits, '-', '_' or '.', "
                f"not {scope!r}",
            )
        for name in (
            "ca_rekey_after_days",
            "ca_link_deadline_hours",
            "portal_session_hours",
            "outbox_retention_days",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(
                    "config.invalid", f"{name} must be a whole number of at least 1, not {value!r}"
                )

    @property
    def keys_dir(self) -> Path:
        """Where encrypted CA key files live."""
        return self.home / "keys"

    @property
    def config_path(self) -> Path:
        """The home's ``config.toml``."""
        return self.home / CONFIG_FILE

    @property
    def public_url_is_default(self) -> bool:
        """Whether ``public_url`` is the one derived from the default host and ``api_port``.

        Such a URL was never chosen by the operator (``init`` without ``--public-url``),
        so ``serve`` may move it to the port it serves.
        """
        return self.public_url == f"https://{DEFAULT_HOST}:{self.api_port}"

    @property
    def certificate_token_audience(self) -> str:
        """The ``aud`` that certificate tokens must carry."""
        return self.token_audience or self.public_url

    @classmethod
    def default_for(cls, home: Path, database_url: str | None = None) -> Settings:
        """Settings for a new home: SQLite inside it unless a URL is given."""
        return cls(home=home, database_url=database_url or f"sqlite:///{home / 'fleetpki.db'}")

    @classmethod
    def load(cls, home: Path) -> Settings:
        """Read ``home/config.toml``.

        Raises:
            NotFoundError: ``home.not_initialized`` when the home has no configuration.
            ValidationError: ``config.invalid`` for unreadable or unknown settings.
        """
        path = home / CONFIG_FILE
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise NotFoundError(
                "home.not_initialized", f"{home} is not a fleetpki home; run `fleetpki init` first"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ValidationError("config.invalid", f"{path} is not valid TOML: {exc}") from exc
        known = {f.name for f in fields(cls)} - {"home"}
        unknown = set(data) - known
        if unknown:
            raise ValidationError(
                "config.invalid", f"{path}: unknown settings {', '.join(sorted(unknown))}"
            )
        return cls(home=home, **data)

    def with_changes(self, **changes: object) -> Settings:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def save(self) -> None:
        """Write the settings to the home's ``config.toml`` (readable by the owner only)."""
        self.config_path.write_text(self.to_toml())
        self.config_path.chmod(0o600)

    def to_toml(self) -> str:
        """The settings (without ``home``) as TOML text."""
        lines = ["# fleetpki configuration; see docs/configuration.md"]
        for key, value in asdict(self).items():
            if key == "home":
                continue
            if isinstance(value, bool | int | float):
                lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
            else:
                escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{key} = "{escaped}"')
        return "\n".join(lines) + "\n"
