"""Applications built on steersman: each a campaign you start with ``steersman run``."""
