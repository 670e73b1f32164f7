#!/usr/bin/env bash
# `make demo`: the founding design's development Workflow in one process (embedded queue, in-process demo
# agents, no Redis, no Kubernetes) on a throw-away Git repository: a bare repository made from
# examples/sample-project, every step in its own checkout, and at the end the branch and the diff it produced.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v git >/dev/null || { echo "make demo: git is not installed (apt-get install git)" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/codeforge-demo.XXXXXX")"
trap 'rm -rf "$work"' EXIT
repo="$work/sample-project.git"
git init --quiet --bare --initial-branch=main "$repo"
src="$work/src"
cp -R examples/sample-project "$src"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
git -C "$src" init --quiet --initial-branch=main
git -C "$src" add -A
git -C "$src" -c user.name=codeforge-demo -c user.email=demo@codeforge.invalid \
    commit --quiet -m "sample-project: the starting point"
git -C "$src" push --quiet "$repo" main
base="$(git -C "$repo" rev-parse main)"
echo ">> demo repository: file://$repo (main @ ${base:0:12})"

export CODEFORGE_WORKSPACE_DIR="$work/agent-cache"
status=0
.venv/bin/codeforge run examples/workflows/feature-development.yaml --workspace-url "file://$repo" "$@" || status=$?

branch="codeforge/feature-development"
if git -C "$repo" rev-parse --verify --quiet "refs/heads/$branch" >/dev/null; then
    echo
    echo ">> branch $branch: $(git -C "$repo" log --oneline "main..$branch" | wc -l) commit(s) on top of main"
    git -C "$repo" log --format='   %h %s' "main..$branch"
    echo ">> the diff it produced (git diff main $branch):"
    git -C "$repo" --no-pager diff --stat main "$branch"
    git -C "$repo" --no-pager diff main "$branch"
fi
exit "$status"
