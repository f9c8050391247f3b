#!/usr/bin/env bash
# Install everything (plus test tools and the Slurm daemons), check style, then run the full test suite.
# Extra arguments go to pytest, e.g.  scripts/test.sh -m "not slow"  for the fast set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
echo "style gate: ruff check, ruff format --check, snakefmt --check, snakemake --lint"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/snakefmt --check Snakefile workflow
.venv/bin/snakemake --lint --quiet
exec .venv/bin/python -m pytest "$@"
