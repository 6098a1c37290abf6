"""HTML form bodies (``application/x-www-form-urlencoded``), read strictly and with limits."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from fastapi import Request

from fleetpki.errors import ValidationError

__all__ = ["MAX_FIELDS", "MAX_FORM_BYTES", "Form", "read_form"]

#: Forms longer than this are refused (a C2D message body is the longest field).
MAX_FORM_BYTES = 200_000
#: Fields a form may have.
MAX_FIELDS = 100
_FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Form:
    """A parsed form: each field's values, in the order sent."""

    fields: dict[str, list[str]]

    def values(self, name: str) -> list[str]:
        """Every value of ``name`` (none when absent)."""
        return self.fields.get(name, [])

    def text(self, name: str, *, default: str = "", max_length: int = 1000) -> str:
        """The one value of ``name``, stripped (``default`` when absent).

        Raises:
            ValidationError: ``portal.bad_form`` for a repeated or overlong field.
        """
        values = self.fields.get(name)
        if not values:
            return default
        if len(values) > 1:
            raise ValidationError("portal.bad_form", f"the field {name!r} was sent twice")
        value = values[0].strip()
        if len(value) > max_length:
            raise ValidationError(
                "portal.bad_form", f"the field {name!r} is longer than {max_length} characters"
            )
        return value

    def optional(self, name: str, *, max_length: int = 1000) -> str | None:
        """The field's text, or ``None`` when absent or blank."""
        return self.text(name, max_length=max_length) or None

    def checked(self, name: str) -> bool:
        """Whether a checkbox was ticked (sent at all)."""
        return bool(self.fields.get(name))

    def lines(self, name: str, *, max_items: int = 100) -> list[str]:
        """The field's non-blank lines or comma-separated items.

        Raises:
            ValidationError: ``portal.bad_form`` beyond ``max_items``.
        """
        text = self.text(name, max_length=20_000)
        items = [part.strip() for line in text.splitlines() for part in line.split(",")]
        items = [item for item in items if item]
        if len(items) > max_items:
            raise ValidationError("portal.bad_form", f"the field {name!r} has too many entries")
        return items


async def read_form(request: Request) -> Form:
    """The request's form body.

    Raises:
        ValidationError: ``request.unsupported_media_type`` (415) for another content
            type, ``request.too_large`` (413) over :data:`MAX_FORM_BYTES`,
            ``portal.bad_form`` (400) for a body that is not UTF-8 or has too many fields.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != _FORM_TYPE:
        raise ValidationError(
            "request.unsupported_media_type", f"a portal form is sent as {_FORM_TYPE}"
        )
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ValidationError(
            "request.too_large", f"the form is larger than {MAX_FORM_BYTES} bytes"
        )
    try:
        fields = parse_qs(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise ValidationError("portal.bad_form", "the form is not UTF-8") from None
    except ValueError:
        raise ValidationError("portal.bad_form", "the form has too many fields") from None
    return Form(fields)
