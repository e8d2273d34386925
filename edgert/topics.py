"""MQTT topics as pure values: one node's topic tree, validated when built, and the one topic
grammar (a name's levels, a filter's ``+``/``#``, matching a name against a filter). No MQTT
library.

::

    <prefix>/node/<node>/status | models | stats | events/<model>
    <prefix>/node/<node>/counts/<source> | snapshot/<source>   a video source's (retained)
    <prefix>/node/<node>/infer/<model>[/<key>]     requests pinned to one daemon
    <prefix>/infer/<model>[/<key>]                 pooled requests ($share/<group>/... when shared)
    <prefix>/reply/<key>/<model>                   default reply topic of a keyed request
    homeassistant/device/<node>/config             Home Assistant device discovery
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import NamedTuple

from edgert.errors import ConfigError

__all__ = [
    "MAX_TOPIC_BYTES",
    "RequestTopic",
    "Topics",
    "default_node_id",
    "filter_ok",
    "sanitize_node_id",
    "topic_matches",
]

MAX_TOPIC_BYTES = 65535  # MQTT's limit on a topic name's UTF-8 length


def sanitize_node_id(text: str) -> str:
    """``text`` reduced to ``[a-zA-Z0-9_-]`` (Home Assistant ids need it): other runs become one
    ``_``, leading/trailing ``_``/``-`` go; ``"edgert"`` if nothing is left."""
    node = re.sub(r"[^A-Za-z0-9_-]+", "_", text)
    node = re.sub(r"_+", "_", node).strip("_-")
    return node or "edgert"


def default_node_id() -> str:
    """The host name as a node id."""
    return sanitize_node_id(socket.gethostname())


# A bad level anywhere in "/"-joined levels: MQTT forbids NUL; '+'/'#' are wildcards; an empty
# level, '.' and '..' are refused so no level can look like a path step to a bridge, ACL
# pattern or log reader. (One search: this runs on every request's topics.)
# \A and \Z, not ^ and $: $ also matches before a trailing newline, and would refuse "\n".
_BAD_LEVELS = re.compile(r"[+#\x00]|(?:\A|/)\.{0,2}(?:/|\Z)")


def _levels_ok(levels: str) -> bool:
    """Whether every level of ``levels`` ("/"-joined) is a plain, non-empty one."""
    return _BAD_LEVELS.search(levels) is None


def _level_ok(level: str) -> bool:
    return "/" not in level and _levels_ok(level)


def filter_ok(topic_filter: str) -> bool:
    """Whether ``topic_filter`` is an MQTT subscription filter: non-empty, no NUL, ``+`` alone in
    its level, ``#`` alone in the last level. (A filter's levels may be empty: MQTT allows it.)"""
    if not topic_filter or "\0" in topic_filter:
        return False
    levels = topic_filter.split("/")
    last = len(levels) - 1
    return all(
        ("+" not in level or level == "+") and ("#" not in level or (level == "#" and i == last))
        for i, level in enumerate(levels)
    )


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the subscription filter ``topic_filter``: ``+`` is one level,
    a last ``#`` the parent level and everything below it."""
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(parts) == len(levels)


def _check_topic_root(value: str, what: str) -> None:
    if value.startswith("$") or not _levels_ok(value):
        raise ConfigError(
            f"{what} {value!r} must be non-empty topic levels without wildcards, '$' or '..'"
        )


class RequestTopic(NamedTuple):
    """What a request topic says: the model, the optional ``<key>``, and whether node-pinned."""

    model: str
    key: str | None
    pinned: bool


@dataclass(frozen=True, kw_only=True)
class Topics:
    """Every topic one node uses, from its prefix and node id; validated when built.

    ``reply_prefix`` defaults to ``<prefix>/reply/`` (a trailing ``/`` is added); it may not
    overlap the request or node topics, or a device could make the daemon publish requests.
    ``share_group`` makes pooled subscriptions MQTT 5 shared ones.
    """

    node: str
    prefix: str = "edgert"
    reply_prefix: str | None = None
    share_group: str | None = None
    discovery_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        _check_topic_root(self.prefix, "topic prefix")
        _check_topic_root(self.discovery_prefix, "discovery prefix")
        if self.node != sanitize_node_id(self.node):
            raise ConfigError(
                f"node id {self.node!r} must be [a-zA-Z0-9_-]; e.g. {sanitize_node_id(self.node)!r}"
            )
        if self.share_group is not None and not _level_ok(self.share_group):
            raise ConfigError(f"share group {self.share_group!r} must be one topic level")
        if self.reply_prefix is not None:
            # Frozen, so normalise through object.__setattr__; the value stays a str.
            object.__setattr__(self, "reply_prefix", self.reply_prefix.rstrip("/") + "/")
        reply = self.reply_root
        _check_topic_root(reply[:-1], "reply prefix")
        for other in (f"{self.prefix}/infer/", f"{self.prefix}/node/", f"{self.discovery_prefix}/"):
            if reply.startswith(other) or other.startswith(reply):
                raise ConfigError(f"reply prefix {reply!r} overlaps {other!r}")

    @property
    def reply_root(self) -> str:
        """The reply prefix, ending in ``/``."""
        return self.reply_prefix or f"{self.prefix}/reply/"

    @property
    def _node_root(self) -> str:
        return f"{self.prefix}/node/{self.node}"

    @property
    def status(self) -> str:
        return f"{self._node_root}/status"

    @property
    def models(self) -> str:
        """The retained catalogue."""
        return f"{self._node_root}/models"

    @property
    def stats(self) -> str:
        return f"{self._node_root}/stats"

    @property
    def discovery(self) -> str:
        """Home Assistant device discovery (retained)."""
        return f"{self.discovery_prefix}/device/{self.node}/config"

    @property
    def ha_status(self) -> str:
        """Where Home Assistant announces ``online`` (then discovery is re-sent)."""
        return f"{self.discovery_prefix}/status"

    def events(self, name: str) -> str:
        """Results of a model, or of a source, for Home Assistant."""
        return f"{self._node_root}/events/{_level(name, 'model or source name')}"

    def counts(self, source: str) -> str:
        """A video source's count of each label in its last frame (retained)."""
        return f"{self._node_root}/counts/{_level(source, 'source name')}"

    def snapshot(self, source: str) -> str:
        """A video source's last annotated snapshot, JPEG bytes (retained)."""
        return f"{self._node_root}/snapshot/{_level(source, 'source name')}"

    def node_infer(self, model: str | None = None) -> str:
        """Subscription filter for requests pinned to this node: one model, or all (``None``;
        for answering ``no_model``)."""
        return f"{self._node_root}/infer/" + (f"{_level(model, 'model')}/#" if model else "#")

    def all_infer(self) -> str:
        """Subscription filter for every pooled request, of any model: a single daemon takes
        them all, so a model it does not serve is answered ``no_model``, never silence."""
        return f"{self.prefix}/infer/#"

    def unserved_infer(self) -> str:
        """In a pool: one more shared subscription over every pooled request, in a group of its
        own, so exactly one node sees each request and answers those for a model no node lists."""
        return f"$share/{self.share_group}-unserved/{self.prefix}/infer/#"

    def node_topics(self, leaf: str) -> str:
        """Subscription filter for one topic of every node (``status``, ``models``)."""
        return f"{self.prefix}/node/+/{_level(leaf, 'topic')}"

    def node_of(self, topic: str, leaf: str) -> str | None:
        """The node whose ``leaf`` topic ``topic`` is (the ``+`` of :meth:`node_topics`)."""
        head, tail = f"{self.prefix}/node/", f"/{leaf}"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        node = topic[len(head) : len(topic) - len(tail)]
        return node if _level_ok(node) else None

    def pooled_infer(self, model: str) -> str:
        """Subscription filter for pooled requests to ``model`` (``#`` also matches no key)."""
        filt = f"{self.prefix}/infer/{_level(model, 'model')}/#"
        return f"$share/{self.share_group}/{filt}" if self.share_group else filt

    def request_topic(self, model: str, key: str | None = None, *, pinned: bool = False) -> str:
        """The topic a requester publishes to."""
        root = f"{self._node_root}/infer" if pinned else f"{self.prefix}/infer"
        topic = f"{root}/{_level(model, 'model')}"
        return f"{topic}/{_level(key, 'key')}" if key is not None else topic

    def parse_request_topic(self, topic: str) -> RequestTopic | None:
        """The model, key and pinning of a request topic; ``None`` if it is not one for this node
        (another node's, too many levels, an empty or wildcard level)."""
        levels = topic.split("/")
        root = self.prefix.split("/")
        if levels[: len(root)] != root:
            return None
        rest = levels[len(root) :]
        pinned = rest[:3] == ["node", self.node, "infer"]
        if pinned:
            rest = rest[3:]
        elif rest[:1] == ["infer"]:
            rest = rest[1:]
        else:
            return None
        if not 1 <= len(rest) <= 2 or not _levels_ok("/".join(rest)):
            return None
        return RequestTopic(rest[0], rest[1] if len(rest) == 2 else None, pinned)

    def under_request_root(self, topic: str) -> bool:
        """Whether ``topic`` is under a request root of this node's (``<prefix>/infer/``, or its
        pinned one): a message there that :meth:`parse_request_topic` refuses was meant as a
        request."""
        return topic.startswith((f"{self.prefix}/infer/", f"{self._node_root}/infer/"))

    def default_reply_topic(self, key: str, model: str) -> str:
        """``<reply prefix><key>/<model>``: the reply topic of a keyed request naming none."""
        return f"{self.reply_root}{_level(key, 'key')}/{_level(model, 'model')}"

    def reply_allowed(self, topic: str) -> bool:
        """Whether the daemon may publish a reply to ``topic``: under the reply prefix, no
        wildcards, NULs, empty or ``.``/``..`` levels, at most 65535 UTF-8 bytes."""
        try:
            size = len(topic.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates from a JSON "\ud800" escape
            return False
        if size > MAX_TOPIC_BYTES or not topic.startswith(self.reply_root):
            return False
        rest = topic[len(self.reply_root) :]
        return _levels_ok(rest)

    def reply_device(self, topic: str) -> str:
        """The device an allowed reply topic belongs to: its first level under the reply
        prefix (``kitchen`` in ``edgert/reply/kitchen/occupancy``)."""
        return topic[len(self.reply_root) :].split("/", 1)[0]


def _level(name: str, what: str) -> str:
    if not _level_ok(name):
        raise ConfigError(f"{what} {name!r} cannot be a topic level")
    return name
