"""``edgert.Client`` against the real daemon: what its catalogue declares is what a reply holds."""

from __future__ import annotations

import numpy as np

from edgert import Client
from tests.daemon.conftest import Daemon

READING = [[22.5, 45.0, 480.0, 1150.0]]


def test_wait_ready_then_outputs_in_the_served_dtypes(daemon: Daemon) -> None:
    with Client(daemon.broker.url) as client:
        assert client.wait_ready("occupancy", 30) == daemon.node
        reply = client.infer("occupancy", np.array(READING, np.float32))
    assert set(reply.outputs) and all(o.dtype == np.float32 for o in reply.outputs.values())
