#!/usr/bin/env bash
# Install everything (plus test tools and the Slurm daemons), then run the full test suite.
# Extra arguments go to pytest, e.g.  scripts/test.sh -m "not slow"  for the fast set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
exec .venv/bin/python -m pytest "$@"
