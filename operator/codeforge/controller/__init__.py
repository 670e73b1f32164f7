"""The operator's Kopf handlers: `kopf run -m codeforge.controller` loads them all by importing this package.

Kopf handlers stay thin and call plain functions (`agentpool/reconcile`, `agentpool/builders`,
`workflow/supervisor`, ...).
Kopf runs startup and cleanup handlers in the order they were registered, so the import order matters:
`services` registers first (every handler module imports it), so the Workflow runs hand it their shutdown
(`OperatorServices.before_close`) to write their last statuses before it closes the API session;
`leader_handlers` comes last: its cleanup handler (releasing the leader Lease) must
run after the others.

With the Workflows sharded (CODEFORGE_SHARDS), only shard 0 registers the AgentPool handlers: a shard that
registered them with a filter would still watch the pools, and Kopf would take off the finalizer shard 0
puts on them, on every event (controller/sharding.py).

A bad setting stops the process here with one line naming it (exit 2), not a traceback.
"""

import importlib
import sys
from types import ModuleType

from codeforge.controller.env import ConfigError

try:  # the handlers read the operator's settings as they are declared
    from codeforge.controller import services
    from codeforge.controller.workflow import handlers as workflow_handlers

    POOL_HANDLERS = "codeforge.controller.agentpool.handlers"
    agentpool_handlers: ModuleType | None = (
        importlib.import_module(POOL_HANDLERS) if services.CONFIG.shard.runs_pools else None
    )

    # isort: split
    from codeforge.controller import leader_handlers  # (after the AgentPool handlers, see above)
except ConfigError as exc:
    # One line naming the setting, for `codeforge operator` and the image's `kopf run -m` alike.
    print(f"codeforge operator: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

__all__ = ["agentpool_handlers", "leader_handlers", "services", "workflow_handlers"]
