"""The other payload the network callback decodes: what is published on the daemon's own Home
Assistant discovery topic (it reads its retained config back), which any client can publish to."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from edgert.daemon.homeassistant import HomeAssistant
from edgert.protocol import Topics
from tests.fuzz.strategies import json_values
from tests.fuzz.test_decoders import fuzz


class _Connection:
    def publish(self, *args: Any, **kwargs: Any) -> None:
        pass

    def publish_retained(self, *args: Any, **kwargs: Any) -> None:
        pass

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        pass


discovery_payloads = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"cmps": json_values}).map(lambda v: json.dumps(v).encode()),
    st.just(b"[" * 100_000),
)


@given(discovery_payloads)
@fuzz(300)
def test_discovery_topic_payloads_never_raise(payload: bytes) -> None:
    topics = Topics(node="n")
    ha = HomeAssistant("n", topics, _Connection(), lambda: ([], []))  # type: ignore[arg-type]
    assert ha.on_message(topics.discovery, payload) is True
