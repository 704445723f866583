"""The Redis backend: `RedisMailbox` (Redis Streams, a fleet across hosts) in ``mailbox``, its server-side
scripts as ``.lua`` files beside it, and its durable subscriptions (``subscriptions``).

Importing this package does not import redis-py: ``mailbox`` does (the ``hybridcomms[redis]`` extra)."""
