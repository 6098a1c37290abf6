"""SQLAlchemy 2 models of the hub side: the built-in hub's registry, trust, messages; hub links.

The shapes follow Azure IoT Hub's service API (shared/reference/azure-iot-hub-protocol.md
§3.2: device and twin fields; §4.1: CA certificates with proof of possession), so that
the REST layer is a thin rendering of these rows.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fleetpki.store.models import Base, UTCDateTime

__all__ = [
    "HubC2DMessage",
    "HubCA",
    "HubDevice",
    "HubLink",
    "HubLinkCA",
    "HubLinkGeneration",
    "HubLinkPin",
    "HubMessage",
    "HubMethodCall",
    "HubNode",
    "HubSasPolicy",
    "ProvisioningEnrollment",
    "ProvisioningOperation",
    "ProvisioningRegistration",
]


class HubDevice(Base):
    """A device identity in the hub's registry, with its twin (ref §3.2, §3.3)."""

    __tablename__ = "hub_devices"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="enabled")  # enabled, disabled
    status_reason: Mapped[str | None] = mapped_column(String(128))
    # certificateAuthority, selfSigned or sas (ref §3.2 "SDK bodies").
    auth_type: Mapped[str] = mapped_column(String(32))
    primary_thumbprint: Mapped[str | None] = mapped_column(String(64))
    secondary_thumbprint: Mapped[str | None] = mapped_column(String(64))
    # For sas devices: the primary and secondary symmetric keys, sealed (Fernet, under a
    # key derived from the home's passphrase: services/hub_device_keys.py).
    primary_key: Mapped[str | None] = mapped_column(Text)
    secondary_key: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str] = mapped_column(String(64))
    generation_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]
    status_updated_at: Mapped[dt.datetime]
    connection_state: Mapped[str] = mapped_column(String(16), default="Disconnected")
    connection_state_updated_at: Mapped[dt.datetime | None]
    # Who recorded the state: the hub node, its connection (a session id unique to that
    # connection) and the session's order among the nodes (0: not announced). A
    # disconnect is recorded only from the connection recorded as connected, so that a
    # late one from a node the device has left changes nothing (services/hub_devices.py).
    connection_node: Mapped[str | None] = mapped_column(String(64))
    connection_session: Mapped[str | None] = mapped_column(String(64))
    connection_order: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_activity_at: Mapped[dt.datetime | None]
    c2d_count: Mapped[int] = mapped_column(Integer, default=0)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON)
    desired: Mapped[dict[str, Any]] = mapped_column(JSON)
    desired_version: Mapped[int] = mapped_column(Integer, default=1)
    reported: Mapped[dict[str, Any]] = mapped_column(JSON)
    reported_version: Mapped[int] = mapped_column(Integer, default=1)
    twin_etag: Mapped[str] = mapped_column(String(64))


class HubCA(Base):
    """A CA certificate uploaded to the hub; only verified ones authenticate devices (ref §4.1)."""

    __tablename__ = "hub_cas"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    sha1_hex: Mapped[str] = mapped_column(String(40), index=True)
    sha256_hex: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(Text)
    not_after: Mapped[dt.datetime]
    is_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    verification_code: Mapped[str | None] = mapped_column(String(64))
    etag: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    # The local CA this certificate came from (``fleetpki hub trust CAID``), so that
    # revocation is checked against fleetpki's own certificate table.
    fleetpki_ca_id: Mapped[str | None] = mapped_column(ForeignKey("cas.id"))


class HubMessage(Base):
    """One device-to-cloud (telemetry) message, stored before its PUBACK (ref §1.5)."""

    __tablename__ = "hub_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    module_id: Mapped[str | None] = mapped_column(String(128))
    enqueued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    system_properties: Mapped[dict[str, Any]] = mapped_column(JSON)
    properties: Mapped[dict[str, Any]] = mapped_column(JSON)


class HubC2DMessage(Base):
    """A cloud-to-device message, pending until the device acknowledges it (ref §1.5)."""

    __tablename__ = "hub_c2d"
    __table_args__ = (Index("ix_hub_c2d_device_id_status", "device_id", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    message_id: Mapped[str] = mapped_column(String(128))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    properties: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(
        String(16), default="pending"
    )  # pending, delivered, expired
    created_at: Mapped[dt.datetime]
    delivered_at: Mapped[dt.datetime | None]
    # The outcome (delivered or expired) is owed to the feedback receiver (iothub-ack).
    feedback_due: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class HubSasPolicy(Base):
    """A shared-access policy of the service API (ref §3.1).

    The keys are stored encrypted, not hashed: verifying a SAS token means computing
    HMAC-SHA256 keyed with the key itself, so the server needs the key back. They are
    encrypted at rest with a key derived from the home's key passphrase.
    """

    __tablename__ = "hub_sas_policies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    rights: Mapped[str] = mapped_column(String(200))  # e.g. "RegistryRead,ServiceConnect"
    primary_key: Mapped[str] = mapped_column(Text)  # encrypted
    secondary_key: Mapped[str] = mapped_column(Text)  # encrypted
    created_at: Mapped[dt.datetime]


class HubLinkPin(Base):
    """A device a hub link switched to thumbprint authentication after a revocation.

    A hub cannot refuse one certificate of a certificate-authority device and accept
    another, so when a revoked certificate is not the device's only valid one the link
    pins the device to its current certificate until the revoked one expires; each
    renewal moves the pin, and at ``until`` the device goes back to CA authentication.
    """

    __tablename__ = "hub_link_pins"

    link_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    thumbprint: Mapped[str] = mapped_column(String(40))
    revoked_serial: Mapped[str] = mapped_column(String(64))
    until: Mapped[dt.datetime] = mapped_column(index=True)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class HubLink(Base):
    """A hub this CA drives through a connector: the built-in hub, or an Azure IoT Hub.

    An ``azure`` link names the hub as Azure's management plane does (subscription,
    resource group, hub name under ``management_url``) and how to get a token for it.
    The one secret a credential may need (a client secret, a connection string, a
    client certificate's password) is stored encrypted with a key derived from the
    home's key passphrase (``secret``); it is never returned by a view.
    """

    __tablename__ = "hub_links"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # builtin, azure
    # The link's event consumer (``link:<name>``): outbox deliveries for this hub.
    consumer: Mapped[str] = mapped_column(String(128), unique=True)
    disable_on_revoke: Mapped[bool] = mapped_column(Boolean, default=True)
    register_devices: Mapped[bool] = mapped_column(Boolean, default=False)
    subscription_id: Mapped[str | None] = mapped_column(String(36))
    resource_group: Mapped[str | None] = mapped_column(String(90))
    hub_name: Mapped[str | None] = mapped_column(String(50))
    management_url: Mapped[str | None] = mapped_column(Text)
    # default, client-secret, client-certificate, connection-string
    credential: Mapped[str | None] = mapped_column(String(32))
    tenant_id: Mapped[str | None] = mapped_column(String(128))
    client_id: Mapped[str | None] = mapped_column(String(64))
    authority_host: Mapped[str | None] = mapped_column(Text)
    certificate_path: Mapped[str | None] = mapped_column(Text)
    # The hub's service API when its resource's hostName does not name it (another
    # fleetpki's hub), and a CA bundle (PEM file) its TLS is checked against.
    service_url: Mapped[str | None] = mapped_column(Text)
    ca_bundle: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(Text)  # encrypted
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]

    cas: Mapped[list[HubLinkCA]] = relationship(
        back_populates="link",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="HubLinkCA.added_at",
    )
    generations: Mapped[list[HubLinkGeneration]] = relationship(
        cascade="all, delete-orphan", lazy="selectin"
    )


class HubLinkCA(Base):
    """A CA a link trusts, and what the hub last said about its certificate."""

    __tablename__ = "hub_link_cas"

    link_name: Mapped[str] = mapped_column(
        ForeignKey("hub_links.name", ondelete="CASCADE"), primary_key=True
    )
    ca_id: Mapped[str] = mapped_column(ForeignKey("cas.id"), primary_key=True)
    added_at: Mapped[dt.datetime]
    # The hub's name for the certificate and its thumbprint, once trusted there.
    certificate_name: Mapped[str | None] = mapped_column(String(64))
    thumbprint: Mapped[str | None] = mapped_column(String(40))
    verified_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)

    link: Mapped[HubLink] = relationship(back_populates="cas")


class HubLinkGeneration(Base):
    """A generation of a CA as one link's hub holds it: uploaded and verified, or failing.

    A pending generation becomes active once every link that trusts its CA has a row
    here with ``verified_at`` set (hubs first).
    """

    __tablename__ = "hub_link_generations"

    link_name: Mapped[str] = mapped_column(
        ForeignKey("hub_links.name", ondelete="CASCADE"), primary_key=True
    )
    ca_id: Mapped[str] = mapped_column(ForeignKey("cas.id"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    certificate_name: Mapped[str | None] = mapped_column(String(64))
    thumbprint: Mapped[str | None] = mapped_column(String(40))
    verified_at: Mapped[dt.datetime | None]
    removed_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime]


class HubNode(Base):
    """A hub process on this database, known by the heartbeat it writes while it runs.

    Each node is the outbox consumer ``hub:<name>``; a direct method called where the
    device's session is not asks every node whose heartbeat is fresh (``HubMethodCall``).
    """

    __tablename__ = "hub_nodes"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A random id per run, so that a second process under the same name is noticed.
    instance: Mapped[str] = mapped_column(String(36))
    started_at: Mapped[dt.datetime]
    heartbeat_at: Mapped[dt.datetime] = mapped_column(index=True)
    connected: Mapped[int] = mapped_column(Integer, default=0)


class HubMethodCall(Base):
    """A direct method relayed through the database to the node holding the device (ref §3.4).

    The caller writes the row (and a ``hub.method_called`` event); the node that holds
    the device's session claims it (``claimed_by``), calls the device and writes the
    answer; every other node asked adds itself to ``declined_by``. The caller reads the
    row until it is answered, every node asked declined (404103), or the deadline passes.
    """

    __tablename__ = "hub_method_calls"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128))
    method_name: Mapped[str] = mapped_column(String(128))
    payload: Mapped[Any] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime]
    deadline: Mapped[dt.datetime] = mapped_column(index=True)
    # The nodes asked (their heartbeat was fresh when the call was made).
    asked: Mapped[list[str]] = mapped_column(JSON)
    declined_by: Mapped[list[str]] = mapped_column(JSON)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    # pending, claimed, answered, timeout, offline
    status: Mapped[str] = mapped_column(String(16), default="pending")
    result_status: Mapped[int | None] = mapped_column(Integer)
    result_payload: Mapped[Any] = mapped_column(JSON, nullable=True)


class ProvisioningEnrollment(Base):
    """An enrollment of the provisioning service (Azure DPS's shapes).

    A ``group`` enrollment is attested by a hub CA (``ca_name``, Azure's
    ``caReferences.primary``): any certificate chaining to it, with a CN that is the
    registration id, may register. An ``individual`` enrollment names one registration
    id and the one certificate it must present (its thumbprints).
    """

    __tablename__ = "provisioning_enrollments"
    __table_args__ = (UniqueConstraint("kind", "name", name="uq_provisioning_enrollments_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # group, individual
    # The enrollment group id, or the individual enrollment's registration id.
    name: Mapped[str] = mapped_column(String(128))
    ca_name: Mapped[str | None] = mapped_column(String(200))
    # The fleetpki CA behind that hub CA, if it is one: the group follows the CA's
    # generations in the hub after the named one is retired.
    fleetpki_ca_id: Mapped[str | None] = mapped_column(String(36))
    certificate_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    certificate_sha1: Mapped[str | None] = mapped_column(String(40))
    certificate_sha256: Mapped[str | None] = mapped_column(String(64))
    allocation_policy: Mapped[str] = mapped_column(String(16))  # static, hashed
    hubs: Mapped[list[str]] = mapped_column(JSON)
    initial_twin: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # enabled, disabled
    update_hub_assignment: Mapped[bool] = mapped_column(Boolean, default=True)
    migrate_device_data: Mapped[bool] = mapped_column(Boolean, default=True)
    etag: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class ProvisioningRegistration(Base):
    """Where a registration id was provisioned: DPS's device registration state."""

    __tablename__ = "provisioning_registrations"

    registration_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    enrollment_kind: Mapped[str] = mapped_column(String(16))
    enrollment_name: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[str | None] = mapped_column(String(128))
    assigned_hub: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # assigned, failed, disabled
    substatus: Mapped[str | None] = mapped_column(String(40))
    certificate_sha1: Mapped[str] = mapped_column(String(40))
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class ProvisioningOperation(Base):
    """A registration request's operation, which the device polls by its id.

    Only the newest operation of a registration id is kept; ``certificate_sha1`` is
    the certificate that asked, so a poll with another certificate finds nothing.
    """

    __tablename__ = "provisioning_operations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    registration_id: Mapped[str] = mapped_column(String(128), index=True)
    certificate_sha1: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime]
