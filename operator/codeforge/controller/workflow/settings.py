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
- CODEFORGE_WORKFLOW_PARK_SECONDS: how long every running step of a run waits on its task before the run
  is parked (its LangGraph loop dropped, `orchestrator/runner.py`); default 0.1, where `codeforge run`
  keeps the runner's 1 s. An agent's step takes seconds to hours, so the operator's runs park almost at
  once either way; parked sooner, a starting run's loop is gone before the collector walks it: 22-45 %
  less collection time while Workflows start (bench/README.md, s20). A step that ends sooner never parks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from codeforge.controller.env import count, flag, positive, seconds
from codeforge.orchestrator.admission import DEFAULT_LIMIT

#: CODEFORGE_WORKFLOW_PARK_SECONDS's default, and its bound: an hour.
PARK_SECONDS: Final = 0.1
MAX_PARK_SECONDS: Final = 3600.0


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
    #: How long a run's running steps all wait on their tasks before the run is parked.
    park_after: float = PARK_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkflowSettings:
        env = os.environ if env is None else env
        return cls(
            status_interval=positive(env, "CODEFORGE_WORKFLOW_STATUS_INTERVAL", 2.0),
            writes_per_second=positive(env, "CODEFORGE_STATUS_WRITES_PER_SECOND", 20.0),
            ref_cleanup_timeout=positive(env, "CODEFORGE_WORKSPACE_CLEANUP_TIMEOUT", 30.0),
            step_events=flag(env, "CODEFORGE_WORKFLOW_STEP_EVENTS"),
            busy_runs=count(env, "CODEFORGE_WORKFLOW_BUSY_RUNS", DEFAULT_LIMIT),
            park_after=seconds(
                env, "CODEFORGE_WORKFLOW_PARK_SECONDS", PARK_SECONDS, maximum=MAX_PARK_SECONDS
            ),
        )
