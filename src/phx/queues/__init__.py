"""Ratcheted at-rest queue encryption shared by the QS (fan-out queues) and the AS (direct/alias queues).

:mod:`phx.queues.ratchet` is pure (server-side :func:`new_queue`/:func:`enqueue`/:func:`rotate` and the
client-side :class:`QueueReader`); :mod:`phx.queues.store` holds the SQL and the DDL a service copies into
its migrations.
"""

from .ratchet import (
    MAX_QUEUE_CIPHERTEXT,
    QueueDecryptionError,
    QueueGapError,
    QueueItemType,
    QueueMessage,
    QueueReader,
    QueueState,
    Random,
    enqueue,
    new_queue,
    rotate,
    rotation_due,
)

__all__ = [
    "MAX_QUEUE_CIPHERTEXT",
    "QueueDecryptionError",
    "QueueGapError",
    "QueueItemType",
    "QueueMessage",
    "QueueReader",
    "QueueState",
    "Random",
    "enqueue",
    "new_queue",
    "rotate",
    "rotation_due",
]
