"""The serving daemon: per-model workers, end-to-end request ledger, stats, lifecycle."""

from edgert.daemon.ledger import RequestLedger
from edgert.daemon.service import Service

__all__ = ["RequestLedger", "Service"]
