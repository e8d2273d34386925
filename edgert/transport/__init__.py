"""The transport: the only package that imports an MQTT library (gmqtt, through its public API),
on the event loop that owns the daemon's network I/O."""

from edgert.transport.connection import AFTER_REPLY, MqttTransport
from edgert.transport.loop import EventLoopThread
from edgert.transport.message import Message, packet_size, received

__all__ = ["AFTER_REPLY", "EventLoopThread", "Message", "MqttTransport", "packet_size", "received"]
