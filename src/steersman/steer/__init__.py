"""Steering: BaseThinker, its agent decorators, and the ResourceCounter."""

from steersman.steer.resources import ResourceCounter
from steersman.steer.thinker import (
    AgentSpec,
    BaseThinker,
    agent,
    event_responder,
    result_processor,
    task_submitter,
)

__all__ = [
    "AgentSpec",
    "BaseThinker",
    "ResourceCounter",
    "agent",
    "event_responder",
    "result_processor",
    "task_submitter",
]
