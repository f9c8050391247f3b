"""Screenshot of a built Snakemake report opened at the caption gallery (headless Debian chromium).

python scripts/report_screenshot.py report.html docs/report.png [--size 1400,900]
"""

import argparse
import sys
import tempfile
from pathlib import Path

# the browser helpers live with the tests that use them (one copy), not in the runtime package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import report_opened_at, run_chromium


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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


if __name__ == "__main__":
    main()
