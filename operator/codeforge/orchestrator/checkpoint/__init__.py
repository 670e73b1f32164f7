"""The LangGraph checkpointer on plain Redis (single server or cluster)."""

from codeforge.orchestrator.checkpoint.connect import connect_redis, open_checkpointer
from codeforge.orchestrator.checkpoint.redis_saver import RedisCheckpointSaver

__all__ = ["RedisCheckpointSaver", "connect_redis", "open_checkpointer"]
