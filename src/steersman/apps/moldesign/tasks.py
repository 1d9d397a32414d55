"""The methods a campaign's workers run, under the names its tasks carry.

Standalone workers (``Workers(redis=..., local=False)``) are started with these import
paths, on any host that reaches the Redis server::

    steersman worker --redis URL --namespace moldesign --queues simulate --concurrency 2 \\
        --method steersman.apps.moldesign.tasks:simulate
    steersman worker --redis URL --namespace moldesign --queues ml \\
        --method steersman.apps.moldesign.tasks:train \\
        --method steersman.apps.moldesign.tasks:infer

A spec with its own ``simulator`` names that function (importable on the workers' hosts)
instead of ``tasks:simulate``; it must be called ``simulate``.
"""

from steersman.apps.moldesign.recipes import simulate
from steersman.apps.moldesign.thinkers import infer_space as infer
from steersman.apps.moldesign.thinkers import train_model as train

__all__ = ["infer", "simulate", "train"]
