"""The request side in order: :mod:`~edgert.daemon.intake` → :mod:`~edgert.daemon.admission` →
(the model's worker) → :mod:`~edgert.daemon.replies`, with the requests held while a model loads
replayed through the same stages, and a source's snapshot taken the way a device's request is.

Each request is read and admitted under the models' swap lock, once: the version that decodes
it is the one that takes it, so a swap between the two never makes it decode again. A source's
snapshot is decoded before it takes the lock (a picture's decode must not hold up the network
thread), and decoded again under it only if its model was swapped meanwhile.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from edgert.daemon.admission import Admission, Answer
from edgert.daemon.holding import Held
from edgert.daemon.intake import Accepted, Intake, Passed, Refused
from edgert.daemon.ledger import RequestLedger
from edgert.daemon.models import Models
from edgert.daemon.pool import Pool
from edgert.daemon.replies import LocalWaiter, Replies
from edgert.protocol import ErrorCode, Topics, error_code, error_reply
from edgert.settings import DaemonConfig
from edgert.transport import Message

__all__ = ["Requests"]

log = logging.getLogger("edgert.daemon")


class Requests:
    """Requests in, replies out. ``on_message`` runs on the network thread (and, replaying
    held requests, on the thread that served their model); ``infer_local`` on a source's."""

    def __init__(
        self,
        config: DaemonConfig,
        topics: Topics,
        ledger: RequestLedger,
        models: Models,
        replies: Replies,
        stopping: threading.Event,
        pool: Pool | None = None,
    ) -> None:
        self.models = models
        self.intake = Intake(config, topics, models, pool)
        self.admission = Admission(config, topics, ledger)
        self.replies = replies
        self._stopping = stopping

    def on_message(
        self, message: Message, *, received: float | None = None, defer: bool = True
    ) -> bool:
        """Take a request, or answer it with an error (True); False for a message that is not a
        request to this node. ``received`` is when it came (a held request's first arrival);
        ``defer`` lets a fast model keep it for the burst's batch (the network thread only)."""
        answer: Answer | None = None
        with self.models.swap:  # no swap between its decode and its take
            read = self.intake.read(message, received)
            if isinstance(read, Accepted):
                answer = self.admission.admit(read, defer=defer)
        if read is Passed.NOT_A_REQUEST:
            return False
        if isinstance(read, Refused):
            self.replies.refuse(read)
        elif answer is not None:
            self.replies.answer(answer)
        return True

    def replay(self, held: list[Held]) -> None:
        """Take the requests held for a model that is now served (or answer them, if it
        failed), as if they had just come, with their deadlines counted from their arrival."""
        for item in held:
            try:
                self.on_message(item.message, received=item.received, defer=False)
            except Exception:  # a bug must not reach the thread that served the model
                log.exception("%s: a held request failed", item.model)

    def expire_held(self, *, everything: bool = False) -> None:
        """Answer the held requests that waited past their bound (``loading``) or deadline
        (``expired``); ``everything`` when stopping."""
        for refused in self.intake.expired(everything=everything):
            self.replies.refuse(refused)

    def infer_local(
        self, model: str, payload: bytes, content_type: str, timeout: float
    ) -> Mapping[str, Any]:
        """The reply ``model`` gives ``payload`` (a source's snapshot), taken the way a device's
        request is: its pre-processing, its worker's queue, its post-processing. An error reply
        when it cannot run, ``expired`` when no result comes within ``timeout`` seconds."""
        if self._stopping.is_set():
            return _error(ErrorCode.NO_MODEL, f"model '{model}' is not served now")
        replies: list[bytes] = []
        answered = threading.Event()

        def deliver(reply: bytes) -> None:
            replies.append(reply)
            answered.set()

        waiter = LocalWaiter("", None, 0, deliver=deliver)
        taken = False
        received = time.monotonic()
        # Decoded outside the swap lock: a camera's picture takes milliseconds to decode, and the
        # network thread takes the lock for every device's request meanwhile.
        read = self.intake.read_local(model, payload, content_type, received)
        with self.models.swap:  # taken by the version that decoded it, as a device's is
            if isinstance(read, Accepted) and self.models.get(model) is not read.served:
                read = self.intake.read_local(model, payload, content_type, received)  # swapped
            if isinstance(read, Accepted):
                taken = self.admission.admit_local(read, waiter, timeout)
        if isinstance(read, Refused):
            return _error(error_code(read.error), read.error.message)
        if not taken:
            return _error(ErrorCode.BUSY, f"{model}'s queue is full")
        if not answered.wait(timeout):
            return _error(ErrorCode.EXPIRED, f"no result from {model} within {timeout:g} s")
        return dict(json.loads(replies[0]))


def _error(code: ErrorCode, text: str) -> dict[str, Any]:
    return dict(json.loads(error_reply(None, code, text)))
