"""The one topic grammar (edgert.topics): a filter's ``+``/``#`` rules and matching a topic
against a filter, each held to a reference written another way; and the filters the settings
accept and the node subscribes to, held to the grammar."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from edgert.errors import ConfigError
from edgert.settings import DaemonConfig, SourceConfig
from edgert.topics import Topics, filter_ok, topic_matches

SEEDED = settings(max_examples=2000, derandomize=True, database=None, deadline=None)

# Few characters, so generated filters and topics share levels and often match; every character
# the grammar treats specially is among them.
TOPIC_LEVEL = st.text("ab$. ", max_size=3)  # a topic name has no wildcards
TEXT = st.text("ab/+#$.\x00", max_size=12)
# One filter level, as MQTT allows it anywhere but last: '+' alone, or no wildcard at all.
_LEVEL_RE = r"(?:\+|[^/+#\x00]*)"
_FILTER_RE = re.compile(rf"(?:{_LEVEL_RE}/)*(?:{_LEVEL_RE}|#)", re.DOTALL)


def reference_filter_ok(topic_filter: str) -> bool:
    """MQTT's filter grammar as one regular expression."""
    return topic_filter != "" and _FILTER_RE.fullmatch(topic_filter) is not None


def reference_matches(topic_filter: str, topic: str) -> bool:
    """MQTT's matching as a regular expression: ``+`` any run without ``/``, a last ``#`` the
    parent level and anything below it (all of any topic when it is the whole filter)."""
    levels = topic_filter.split("/")
    wild = levels[-1] == "#"
    head = levels[:-1] if wild else levels
    pattern = "/".join("[^/]*" if level == "+" else re.escape(level) for level in head)
    if wild:
        pattern = f"{pattern}(?:/.*)?" if head else ".*"
    return re.fullmatch(pattern, topic, re.DOTALL) is not None


@st.composite
def filters_and_topics(draw: st.DrawFn) -> tuple[str, str]:
    """A valid filter and a topic; half the time the filter is made from the topic (levels made
    '+', a tail made '#', a level added), so it matches or nearly does."""
    topic = "/".join(draw(st.lists(TOPIC_LEVEL, min_size=1, max_size=5)))
    if draw(st.booleans()):
        levels = ["+" if draw(st.integers(0, 3)) == 0 else level for level in topic.split("/")]
        cut = draw(st.integers(0, len(levels)))
        if cut < len(levels) and draw(st.booleans()):
            levels = [*levels[:cut], "#"]
        elif draw(st.booleans()):
            levels.append(draw(st.sampled_from(["a", "+", "#"])))
        topic_filter = "/".join(levels)
    else:
        levels = draw(
            st.lists(st.sampled_from(["a", "b", "", "+", "$", "."]), min_size=1, max_size=5)
        )
        topic_filter = "/".join([*levels, "#"] if draw(st.booleans()) else levels)
    topic_filter = topic_filter or "+"  # a filter is never empty
    assert reference_filter_ok(topic_filter), topic_filter
    return topic_filter, topic


@given(TEXT)
@SEEDED
def test_filter_grammar_agrees_with_the_reference(text: str) -> None:
    assert filter_ok(text) == reference_filter_ok(text)


@given(filters_and_topics())
@SEEDED
def test_the_matcher_agrees_with_the_reference(case: tuple[str, str]) -> None:
    topic_filter, topic = case
    assert topic_matches(topic_filter, topic) == reference_matches(topic_filter, topic)
    if not topic.startswith("$"):  # paho keeps $-topics from wildcards, as brokers do
        assert topic_matches(topic_filter, topic) == topic_matches_sub(topic_filter, topic)


def test_the_matcher_on_examples() -> None:
    assert topic_matches("home/motion", "home/motion")
    assert topic_matches("home/+/motion", "home/hall/motion")
    assert topic_matches("home/#", "home/hall/motion")
    assert topic_matches("home/#", "home")
    assert topic_matches("#", "anything/at/all")
    assert topic_matches("+/+", "/x")  # levels may be empty
    assert not topic_matches("home/+", "home/hall/motion")
    assert not topic_matches("home/motion", "home/motion/x")
    assert not topic_matches("home/+", "home")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("a/b", True),
        ("a/+/c", True),
        ("a/#", True),
        ("#", True),
        ("+", True),
        ("a//b", True),
        ("", False),
        ("a/#/b", False),
        ("a/b#", False),
        ("a+/b", False),
        ("a/\x00", False),
    ],
)
def test_the_filter_grammar_on_examples(text: str, ok: bool) -> None:
    assert filter_ok(text) is ok


def _source(trigger: str) -> SourceConfig | None:
    try:
        return SourceConfig(name="cam", model="m", url="http://cam.local/snap.jpg", trigger=trigger)
    except ConfigError:
        return None


@given(TEXT)
@SEEDED
def test_the_settings_accept_exactly_the_filters_the_grammar_accepts(text: str) -> None:
    assert (_source(text) is not None) == filter_ok(text)


@given(TEXT)
@settings(max_examples=300, derandomize=True, database=None, deadline=None)
def test_a_config_file_trigger_is_held_to_the_grammar(text: str) -> None:
    source = {"name": "cam", "model": "m", "url": "http://cam.local/snap.jpg", "trigger": text}
    try:
        DaemonConfig.from_dict({"sources": [source]}, where="edgert.toml")
    except ConfigError as exc:
        assert not filter_ok(text), exc.message
    else:
        assert filter_ok(text)


NAME = st.text("abc-_", min_size=1, max_size=6)


def _unshared(topic_filter: str) -> str:
    """A shared subscription's filter without its ``$share/<group>/``: what topics it matches."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter


@given(NAME, st.none() | NAME, st.booleans(), st.none() | NAME)
@settings(max_examples=300, derandomize=True, database=None, deadline=None)
def test_the_nodes_filters_are_filters_and_match_its_request_topics(
    model: str, key: str | None, pinned: bool, group: str | None
) -> None:
    topics = Topics(node="kitchen", share_group=group)
    topic = topics.request_topic(model, key, pinned=pinned)
    own = topics.node_infer(model) if pinned else _unshared(topics.pooled_infer(model))
    every = topics.node_infer() if pinned else topics.all_infer()
    for topic_filter in (own, every, topics.node_topics("status")):
        assert filter_ok(topic_filter), topic_filter
    if group is not None and not pinned:
        assert filter_ok(topics.pooled_infer(model)) and filter_ok(topics.unserved_infer())
    assert topic_matches(own, topic) and topic_matches(every, topic)
    assert topics.parse_request_topic(topic) == (model, key, pinned)
    assert topic_matches(topics.node_topics("status"), topics.status)


def test_a_level_ending_in_a_newline_is_a_level_like_any_other() -> None:
    # Python's $ also matches before a trailing newline: the grammar must not take "\n" for
    # an empty level.
    t = Topics(node="n1")
    for model in ("\n", "a\n", "\n\n"):
        assert t.parse_request_topic(t.request_topic(model, None)) == (model, None, False)
    with pytest.raises(ConfigError):
        t.request_topic("..", None)
