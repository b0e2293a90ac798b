#!/usr/bin/env bash
# How long `anomaly-ae --help` takes, this checkout against an older commit (default 799d92d, before the
# package root became light), with hyperfine (apt-get install hyperfine). Writes benchmarks/results/cli_help.md.
#   bash benchmarks/cli_help.sh [OLD_COMMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd); old=${1:-799d92d}; tree=$(mktemp -d)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
git worktree add -q --detach "$tree" "$old"
# `python -m` puts the working directory first on sys.path: each command runs in its own checkout.
hyperfine --warmup 1 --runs 10 --export-markdown benchmarks/results/cli_help.md \
  -n "anomaly-ae --help (this checkout)" "cd $repo && $repo/.venv/bin/python -m anomaly_ae.cli --help" \
  -n "anomaly-ae --help ($old)" "cd $tree && $repo/.venv/bin/python -m anomaly_ae.cli --help"
