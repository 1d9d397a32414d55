"""steersman: steer large campaigns of computations, deciding what to run next as results arrive."""

__version__ = "0.1.0"

from steersman.brokers import Broker, LocalBroker  # noqa: E402
from steersman.errors import (  # noqa: E402
    ConfigurationError,
    ResultTimeout,
    RunAborted,
    SerializationError,
    SteersmanError,
    UnknownMethodError,
    UnknownTopicError,
)
from steersman.flag import Flag  # noqa: E402
from steersman.queues import Queues  # noqa: E402
from steersman.steer import (  # noqa: E402
    BaseThinker,
    ResourceCounter,
    agent,
    event_responder,
    result_processor,
    task_submitter,
)
from steersman.task import Failure, ResourceRequest, Result, Task  # noqa: E402
from steersman.workers import WorkerPool, current_task  # noqa: E402

__all__ = [
    "BaseThinker",
    "Broker",
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
