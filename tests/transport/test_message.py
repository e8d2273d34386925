"""gmqtt's view of a PUBLISH to edgert's Message, and the PUBLISH packet's size."""

from __future__ import annotations

from edgert.transport.message import packet_size, publish_properties, received, suback_reason


def test_properties_arrive_as_edgert_values() -> None:
    props = {
        "retain": 1,
        "dup": 0,
        "response_topic": ["edgert/reply/k/m"],
        "correlation_data": [b"\x01"],
        "content_type": ["application/json"],
        "user_property": [("id", "a"), ("stream", "s")],
        "message_expiry_interval": [30],
        "subscription_identifier": [2, 5],
    }
    message = received("edgert/infer/m", b"{}", 1, props, 9)
    assert message.retain and message.mid == 9 and message.qos == 1
    assert message.response_topic == "edgert/reply/k/m" and message.correlation == b"\x01"
    assert message.content_type == "application/json" and message.expiry == 30
    assert dict(message.user) == {"id": "a", "stream": "s"} and message.subscriptions == (2, 5)


def test_a_311_message_has_no_properties_and_a_bad_topic_is_decoded_with_replacement() -> None:
    message = received(b"edgert/\xff", b"x", 0, {"retain": 0, "dup": 0}, 1)
    assert message.topic == "edgert/\ufffd" and not message.retain
    assert message.response_topic is None and message.user == {} and message.subscriptions == ()
    kept = received("edgert/infer/m", b"x", 1, {"retain": 1, "dup": 1}, 2)
    assert kept.retain and (kept.qos, kept.mid, kept.payload) == (1, 2, b"x")
    # One property beside the flags is read as any MQTT 5 message's are.
    one = received("edgert/infer/m", b"x", 1, {"retain": 0, "dup": 0, "content_type": ["a/b"]}, 3)
    assert one.content_type == "a/b" and not one.retain


def test_packet_size_counts_header_topic_id_properties_and_payload() -> None:
    # 3.1.1 QoS 0: fixed header (1 + 1 length byte) + 2 + topic + payload.
    assert packet_size("ab", b"xyz", 0, {}, v5=False) == 2 + 2 + 2 + 3
    # QoS 1 adds the packet id; MQTT 5 a properties length (one byte when empty).
    assert packet_size("ab", b"xyz", 1, {}, v5=True) == 2 + 2 + 2 + 2 + 1 + 3
    props = publish_properties(b"\x00" * 4, None, "r/t")
    # correlation: id + 2-byte length + 4; response topic: id + 2 + 3.
    assert packet_size("ab", b"", 0, props, v5=True) == 2 + 2 + 2 + 1 + 7 + 6
    # A remaining length of 128 or more takes two bytes.
    assert packet_size("ab", bytes(200), 0, {}, v5=False) == 1 + 2 + 4 + 200


def test_suback_refusals_are_named() -> None:
    assert suback_reason(0x87) == "Not authorized (reason code 0x87)"
    assert suback_reason(0x80).startswith("Unspecified error")
