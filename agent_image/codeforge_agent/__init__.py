"""codeforge-agent: the runtime of AgentPool pods; claims tasks, runs a handler, reports the result.

In-process use (the orchestrator's embedded mode):

    stop = asyncio.Event()
    await run_agent(queue, AgentConfig(pool="research", handler=HandlerConfig(kind="echo")), stop)
"""

from codeforge_agent.config import AgentConfig, ConfigError, HandlerConfig
from codeforge_agent.execution import TaskTiming
from codeforge_agent.handlers import Handler, HandlerError, PythonHandler, TaskContext, build_handler
from codeforge_agent.loop import Agent, run_agent

__all__ = [
    "Agent",
    "AgentConfig",
    "ConfigError",
    "Handler",
    "HandlerConfig",
    "HandlerError",
    "PythonHandler",
    "TaskContext",
    "TaskTiming",
    "build_handler",
    "run_agent",
]
