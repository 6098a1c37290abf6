"""JSON Schemas of the Azure request bodies, for the OpenAPI document of the Azure routes.

The Azure-compatible routes parse their bodies by hand (Azure's shapes are looser than
a pydantic model: unknown fields are ignored, ``null`` means absent), so FastAPI would
describe them as "any object". These schemas say what the routes read, field by field
(ref §3.2-3.4, §4.1), so that clients, and the property-based fuzzer of the test suite,
see the real shapes. The routes refuse whatever breaks them, with Azure's errors.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ARM_CERTIFICATE_BODY",
    "ARM_VERIFY_BODY",
    "DEVICE_BODY",
    "METHOD_BODY",
    "QUERY_BODY",
    "TWIN_BODY",
    "json_body",
]

_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}

#: A device identity (PUT /devices/{id}).
DEVICE_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "deviceId": {"type": "string", "maxLength": 128},
        "status": {"type": "string", "enum": ["enabled", "disabled"]},
        "statusReason": {**_NULLABLE_STRING, "maxLength": 1024},
        "authentication": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["certificateAuthority", "selfSigned", "sas"]},
                "symmetricKey": {
                    "type": "object",
                    "properties": {
                        "primaryKey": {**_NULLABLE_STRING, "maxLength": 128},
                        "secondaryKey": {**_NULLABLE_STRING, "maxLength": 128},
                    },
                },
                "x509Thumbprint": {
                    "type": "object",
                    "properties": {
                        "primaryThumbprint": {**_NULLABLE_STRING, "maxLength": 128},
                        "secondaryThumbprint": {**_NULLABLE_STRING, "maxLength": 128},
                    },
                },
            },
        },
    },
}

#: A twin patch or replacement (PATCH and PUT /twins/{id}).
TWIN_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "tags": {"type": "object"},
        "properties": {"type": "object", "properties": {"desired": {"type": "object"}}},
    },
}

#: A device query (POST /devices/query); only ``SELECT * FROM devices`` is served.
QUERY_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["query"],
    "properties": {"query": {"type": "string", "maxLength": 8192}},
}

#: A direct-method invocation (POST /twins/{id}/methods, ref §3.4).
METHOD_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["methodName"],
    "properties": {
        "methodName": {"type": "string", "minLength": 1, "maxLength": 256},
        "responseTimeoutInSeconds": {"type": "number", "minimum": 1, "maximum": 300},
        "payload": {},
    },
}

#: A CA certificate to create or replace (ARM ``Certificates_CreateOrUpdate``, ref §4.1).
ARM_CERTIFICATE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["properties"],
    "properties": {
        "properties": {
            "type": "object",
            "required": ["certificate"],
            "properties": {
                "certificate": {"type": "string", "maxLength": 65536},
                "isVerified": {"type": "boolean"},
            },
        }
    },
}

#: A proof of possession (ARM ``Certificates_Verify``, ref §4.1).
ARM_VERIFY_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["certificate"],
    "properties": {"certificate": {"type": "string", "maxLength": 65536}},
}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """The ``openapi_extra`` that documents ``schema`` as the JSON request body."""
    return {"requestBody": {"content": {"application/json": {"schema": schema}}}}
