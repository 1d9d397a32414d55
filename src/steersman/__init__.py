"""steersman: steer large campaigns of computations, deciding what to run next as results arrive."""

__version__ = "0.1.0"

from steersman.brokers import Broker, LocalBroker
from steersman.errors import (
    BrokerRefused,
    BrokerUnavailable,
    ConfigurationError,
    ResultTimeout,
    RunAborted,
    SerializationError,
    SteersmanError,
    UnknownMethodError,
    UnknownTopicError,
)
from steersman.flag import Flag
from steersman.queues import Queues
from steersman.steer import (
    BaseThinker,
    ResourceCounter,
    agent,
    event_responder,
    result_processor,
    task_submitter,
)
from steersman.task import Failure, ResourceRequest, Result, Task
from steersman.workers import WorkerPool, current_task

__all__ = [
    "BaseThinker",
    "Broker",
    "BrokerRefused",
    "BrokerUnavailable",
    "ConfigurationError",
    "Failure",
    "Flag",
    "LocalBroker",
    "Queues",
    "ResourceCounter",
    "ResourceRequest",
    "Result",
    "ResultTimeout",
    "RunAborted",
    "SerializationError",
    "SteersmanError",
    "Task",
    "UnknownMethodError",
    "UnknownTopicError",
    "WorkerPool",
    "__version__",
    "agent",
    "current_task",
    "event_responder",
    "result_processor",
    "task_submitter",
]
