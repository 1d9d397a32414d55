"""Exceptions raised by steersman, each with a message a user can act on."""

from __future__ import annotations


class SteersmanError(Exception):
    """Base class of every error steersman raises on purpose."""


class ConfigurationError(SteersmanError, ValueError):
    """A queue, pool or thinker was configured in a way that cannot work."""


class UnknownMethodError(ConfigurationError):
    """A task named a method that was not declared on the queues."""


class UnknownTopicError(ConfigurationError):
    """A task or a result wait named a topic that was not declared on the queues."""


class SerializationError(SteersmanError, TypeError):
    """Inputs or a value could not be turned into bytes (or back)."""


class EnvelopeError(SteersmanError):
    """A message on the wire is garbled or was written by an incompatible release."""


class ValueMissingError(EnvelopeError):
    """A value passed by reference (big inputs or a big result) is not in the value store:
    it expired, or the sender used a store this process does not see."""


class EnvelopeVersionError(EnvelopeError):
    """A message written by a release with another wire format: intact, but not readable
    here. Unlike a garbled or forged message it is kept for a reader that understands it."""


class ResultTimeout(SteersmanError, TimeoutError):
    """No result arrived on a topic before the deadline."""


class RunAborted(SteersmanError):
    """A wait was interrupted because the run is stopping (an agent failed or Ctrl-C)."""


class BrokerUnavailable(SteersmanError):
    """The broker's server (Redis) could not be reached within the deadline."""


class BrokerRefused(SteersmanError):
    """The broker's server (Redis) is up but refuses to write: it is over its memory limit
    (``maxmemory``), or it is a read-only replica. The write it refused did not happen (a
    ``send_batch`` sent in chunks says in the error's note how many tasks went before)."""


class PoolError(SteersmanError):
    """A worker pool cannot do what was asked (not started, already stopped, ...)."""


class UnknownTaskTypeError(ConfigurationError, KeyError):
    """A ResourceCounter was asked about a task type (pool) it does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
