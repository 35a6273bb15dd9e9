"""What a queue holds, read passively (the queue must exist)."""

from __future__ import annotations

import aio_pika


async def queue_depth(amqp: aio_pika.abc.AbstractRobustConnection, name: str) -> tuple[int, int]:
    """(messages ready, consumers) of the queue `name`."""
    channel = await amqp.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        result = queue.declaration_result
        return result.message_count, result.consumer_count
    finally:
        await channel.close()
