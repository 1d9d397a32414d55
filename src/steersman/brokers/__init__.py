"""Where tasks and results live: the embedded :class:`LocalBroker` (default)."""

from steersman.brokers.base import Broker
from steersman.brokers.local import LocalBroker

__all__ = ["Broker", "LocalBroker"]
