#!/usr/bin/env bash
# `make demo`: run the founding design's development Workflow in one process on the embedded queue
# (in-process demo agents, no Redis, no Kubernetes), with live progress and the final state.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/codeforge run examples/workflows/feature-development.yaml "$@"
