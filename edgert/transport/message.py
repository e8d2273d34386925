"""MQTT messages as edgert sees them, in and out: nothing above the transport sees gmqtt's types."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

__all__ = ["Message", "packet_size", "publish_properties", "received", "suback_reason"]

# SUBACK's refusals (MQTT 5.0 section 3.9.3; 3.1.1 has only 0x80, "Failure").
_SUBACK_REFUSALS = {
    0x80: "Unspecified error",
    0x83: "Implementation specific error",
    0x87: "Not authorized",
    0x8F: "Topic Filter invalid",
    0x91: "Packet Identifier in use",
    0x97: "Quota exceeded",
    0x9E: "Shared Subscriptions not supported",
    0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}


def suback_reason(code: int) -> str:
    """A SUBACK refusal as the broker's log and the spec word it, with its code."""
    return f"{_SUBACK_REFUSALS.get(code, 'Refused')} (reason code 0x{code:02x})"


class Message(msgspec.Struct, frozen=True):
    """An incoming publish."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    # The transport's own number for this delivery (gmqtt does not pass the packet id up): what
    # edgert.acks keys a request's acknowledgement by.
    mid: int
    response_topic: str | None = None
    correlation: bytes | None = None
    content_type: str | None = None
    user: Mapping[str, str] = msgspec.field(default_factory=dict)
    expiry: int | None = None
    # MQTT 5 Subscription Identifiers of the subscriptions it came through: one client's
    # overlapping shared subscriptions each deliver a copy, told apart by these.
    subscriptions: tuple[int, ...] = ()


_FLAGS = {"dup", "retain"}  # what gmqtt adds to the properties of every message


def _first(properties: Mapping[str, Any], name: str) -> Any:
    values = properties.get(name)
    return values[0] if values else None


def received(
    topic: str | bytes, payload: bytes, qos: int, properties: Mapping[str, Any], mid: int
) -> Message:
    """The Message of what gmqtt's ``on_message`` passes: its properties map each MQTT 5
    property's name to the list of its values, and carries ``retain`` and ``dup`` too."""
    if isinstance(topic, bytes):  # gmqtt passes a topic that is not UTF-8 undecoded
        topic = topic.decode("utf-8", errors="replace")
    if properties.keys() <= _FLAGS:  # MQTT 3.1.1, or 5 without properties: nothing else to read
        return Message(topic, bytes(payload), qos, bool(properties.get("retain")), mid)
    user = properties.get("user_property") or ()
    return Message(
        topic=topic,
        payload=bytes(payload),
        qos=qos,
        retain=bool(properties.get("retain")),
        mid=mid,
        response_topic=_first(properties, "response_topic"),
        correlation=_first(properties, "correlation_data"),
        content_type=_first(properties, "content_type"),
        user=dict(user),
        expiry=_first(properties, "message_expiry_interval"),
        subscriptions=tuple(properties.get("subscription_identifier") or ()),
    )


def publish_properties(
    correlation: bytes | None,
    content_type: str | None,
    response_topic: str | None,
    user: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """gmqtt's keyword arguments for these MQTT 5 properties (it drops them on 3.1.1)."""
    props: dict[str, Any] = {}
    if correlation:
        props["correlation_data"] = correlation
    if content_type:
        props["content_type"] = content_type
    if response_topic:
        props["response_topic"] = response_topic
    if user:
        props["user_property"] = list(user)
    return props


def _varint_size(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def _properties_size(props: Mapping[str, Any]) -> int:
    size = 0
    for name, value in props.items():
        if name == "user_property":
            size += sum(5 + len(k.encode()) + len(v.encode()) for k, v in value)
        elif isinstance(value, bytes):
            size += 3 + len(value)
        elif isinstance(value, str):
            size += 3 + len(value.encode())
    return _varint_size(size) + size


def packet_size(topic: str, payload: bytes, qos: int, props: Mapping[str, Any], v5: bool) -> int:
    """The bytes of the PUBLISH packet for these, fixed header included: what a broker's
    Maximum Packet Size limits."""
    remaining = 2 + len(topic.encode("utf-8")) + len(payload) + (2 if qos > 0 else 0)
    if v5:
        remaining += _properties_size(props)
    return 1 + _varint_size(remaining) + remaining
