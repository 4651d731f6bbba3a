"""Celery tasks of the carts app (thin: each calls one service)."""
import redis

from carts.services import pending_cache_delete_flush
from ops.runtime.tasks import background_task


# Redis outages last minutes: ten retries with a five-minute cap ride one out; after
# that every cart_cleanup run (each 15 minutes) flushes what is left.
@background_task(
    "cache_cleanup", queue="default", max_retries=10, backoff_cap=300.0, retry_on=(redis.RedisError,),
)
def cache_cleanup() -> int:
    """Remove from Redis the cache keys of deleted carts that Redis could not take at the time."""
    return pending_cache_delete_flush()
