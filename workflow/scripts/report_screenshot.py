"""Screenshot of a built Snakemake report opened at the caption gallery (headless Debian chromium).

python workflow/scripts/report_screenshot.py report.html docs/report.png [--size 1400,900]
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from vidcap.report import report_opened_at, run_chromium  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("report")
parser.add_argument("png")
parser.add_argument("--result", default="gallery.html", help="embedded result to open")
parser.add_argument("--category", default="Caption gallery")
parser.add_argument("--size", default="1400,900", help="window width,height in pixels")
args = parser.parse_args()

page = report_opened_at(Path(args.report).read_text(encoding="utf-8"), args.result, args.category)
with tempfile.TemporaryDirectory() as tmp:
    view = Path(tmp) / "report_view.html"
    view.write_text(page, encoding="utf-8")
    run_chromium(view.as_uri(), f"--screenshot={Path(args.png).resolve()}", size=args.size)
print(f"wrote {args.png}")
