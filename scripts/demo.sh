#!/usr/bin/env bash
# Install everything, then run the demo workflow end to end on this machine (CPU is enough):
# synthetic lavfi clips captioned by a tiny RANDOM-WEIGHT model, so the captions are gibberish.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY=.venv/bin/python
[ -f demo/tiny-qwen2-vl/config.json ] || "$PY" -m vidcap tiny-model demo/tiny-qwen2-vl --arch qwen2_vl
"$PY" -m vidcap demo demo
.venv/bin/snakemake --cores "${CORES:-2}" --resources gpu=1 --configfile config/demo.yaml "$@"
.venv/bin/snakemake --configfile config/demo.yaml --report demo/report.html >/dev/null 2>&1 \
    && echo "report: demo/report.html (open it in a browser)"
"$PY" - <<'PY'
import json
records = json.load(open("demo/captions.json", encoding="utf-8"))
print(f"\ndemo/captions.json: {len(records)} records")
for r in records:
    m = r["caption_meta"]
    print(f"  {r['video'][0]:<24} {m['status']:<9} {(r['caption'] or m['error'])[:60]!r}")
print("NOTE: the demo model has random weights, so these captions are gibberish by design.")
PY
