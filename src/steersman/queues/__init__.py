"""The client API: ``send_inputs`` / ``get_result`` over declared methods and topics."""

from steersman.queues.base import DEFAULT_QUEUE, DEFAULT_TOPIC, Queues

__all__ = ["DEFAULT_QUEUE", "DEFAULT_TOPIC", "Queues"]
