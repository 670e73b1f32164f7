#!/usr/bin/env bash
# `make demo`: run the founding design's development Workflow in one process on the embedded queue.
set -euo pipefail
cd "$(dirname "$0")/.."
example=examples/workflows/feature-development.yaml
if [ ! -f "$example" ]; then
  echo "The orchestrator (issue 4) is not built yet: $example does not exist."
  echo "What works today: the task queue. Try: .venv/bin/codeforge bench queue --quick"
  exit 0
fi
exec .venv/bin/codeforge run "$example"
