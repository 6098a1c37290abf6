"""MQTT 3.1.1 topic names and topic filters (§4.7): what is valid, and what matches what."""

from __future__ import annotations

from fleetpki.hub.protocol.packets import ProtocolError, ProtocolErrorCode

__all__ = ["topic_matches", "validate_topic_filter", "validate_topic_name"]


def validate_topic_name(topic: str) -> None:
    """Check a topic name for PUBLISH: non-empty, no wildcards (§4.7.3, §3.3.2.1).

    Raises:
        ProtocolError: with code ``mqtt.invalid_topic``.
    """
    if not topic:
        raise ProtocolError("a topic name must not be empty", ProtocolErrorCode.INVALID_TOPIC)
    if "+" in topic or "#" in topic:
        raise ProtocolError(
            "a topic name in PUBLISH must not contain wildcards", ProtocolErrorCode.INVALID_TOPIC
        )


def validate_topic_filter(topic_filter: str) -> None:
    """Check a topic filter: non-empty, wildcards only as whole levels, ``#`` last (§4.7.1).

    Raises:
        ProtocolError: with code ``mqtt.invalid_topic``.
    """
    if not topic_filter:
        raise ProtocolError("a topic filter must not be empty", ProtocolErrorCode.INVALID_TOPIC)
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if ("#" in level and (level != "#" or index != last)) or ("+" in level and level != "+"):
            # §4.7.1.2, §4.7.1.3: '#' is a whole last level, '+' a whole level.
            raise ProtocolError("misplaced wildcard", ProtocolErrorCode.INVALID_TOPIC)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Return whether ``topic`` matches ``topic_filter`` with ``+`` and ``#`` (§4.7.1).

    ``sport/#`` also matches ``sport`` (§4.7.1.2); ``+`` matches one level, possibly
    empty (§4.7.1.3); filters starting with a wildcard do not match topics starting
    with ``$`` (§4.7.2). Both arguments are assumed valid.
    """
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)
