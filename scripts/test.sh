#!/usr/bin/env bash
# Install everything (plus test tools and the Slurm daemons), check style, then run the full test suite.
# Extra arguments go to pytest, e.g.  scripts/test.sh -m "not slow"  for the fast set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
echo "style gate: ruff check, ruff format --check, vermin, snakefmt --check, snakemake --lint"
# ruff parses for pyproject's requires-python (syntax newer than 3.11 fails); vermin finds standard
# library names newer than it (itertools.batched, typing.override), which ruff does not check
.venv/bin/ruff check .
.venv/bin/vermin --target=3.11- --violations --no-tips --quiet vidcap workflow tests bench scripts
.venv/bin/ruff format --check .
.venv/bin/snakefmt --check Snakefile workflow
.venv/bin/snakemake --lint --quiet
exec .venv/bin/python -m pytest "$@"
