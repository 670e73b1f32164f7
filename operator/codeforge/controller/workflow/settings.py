"""Settings of the Workflow controller, from the operator's environment.

- CODEFORGE_WORKFLOW_STATUS_INTERVAL: seconds between status writes of one Workflow; default 2
- CODEFORGE_STATUS_WRITES_PER_SECOND: status writes of all Workflows together; default 20. With the
  Workflows sharded (controller/sharding.py) it is the shards' total: each writes its share
- CODEFORGE_WORKSPACE_CLEANUP_TIMEOUT: how long a deletion waits for an agent to delete the run's step refs
  in its repository; default 30 (the cleanup task stays queued after that)
- CODEFORGE_WORKFLOW_STEP_EVENTS: also post each step's start and success as Events (StepStarted,
  StepSucceeded); default false: status.steps has them, and at 7 Events per three-step Workflow they were
  most of the operator's API requests with thousands of Workflows. Every other transition (failures,
  approvals, retries, the Workflow's end) is an Event either way.
- CODEFORGE_WORKFLOW_BUSY_RUNS: runs that may start or resume at once, until they wait on their tasks
  (`orchestrator/admission.py`); default 32. Under more load than the operator's loop serves, the others
  wait their turn in order, rather than every step of every run going slow together.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from codeforge.controller.env import count, flag, positive
from codeforge.orchestrator.admission import DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class WorkflowSettings:
    status_interval: float = 2.0
    writes_per_second: float = 20.0
    #: How long a deletion waits for an agent to delete the run's step refs (then it goes on without).
    ref_cleanup_timeout: float = 30.0
    #: Post StepStarted / StepSucceeded as Events too (the status shows them either way).
    step_events: bool = False
    #: Runs busy at once (started or resumed, not yet waiting on their tasks).
    busy_runs: int = DEFAULT_LIMIT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkflowSettings:
        env = os.environ if env is None else env
        return cls(
            status_interval=positive(env, "CODEFORGE_WORKFLOW_STATUS_INTERVAL", 2.0),
            writes_per_second=positive(env, "CODEFORGE_STATUS_WRITES_PER_SECOND", 20.0),
            ref_cleanup_timeout=positive(env, "CODEFORGE_WORKSPACE_CLEANUP_TIMEOUT", 30.0),
            step_events=flag(env, "CODEFORGE_WORKFLOW_STEP_EVENTS"),
            busy_runs=count(env, "CODEFORGE_WORKFLOW_BUSY_RUNS", DEFAULT_LIMIT),
        )
