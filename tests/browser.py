"""Viewing a built Snakemake report in headless Debian Chromium (tests and scripts/report_screenshot.py).

Not part of the runtime package: nothing in a build needs a browser.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def embedded_results(report_text: str) -> dict:
    """The results a ``snakemake --report x.html`` page embeds: {path: {name, mime_type, data_uri, ...}}."""
    match = re.search(r'<script id="results">\s*var results = (.*?);\s*</script>', report_text, re.DOTALL)
    if not match:
        raise ValueError("not a Snakemake HTML report (no embedded results)")
    return json.loads(match.group(1))


def decode_data_uri(uri: str) -> bytes:
    header, _, data = uri.partition(",")
    return base64.b64decode(data) if header.endswith(";base64") else data.encode("utf-8")


def report_opened_at(report_text: str, result_name: str, category: str) -> str:
    """A copy of the report page that opens one result (e.g. gallery.html) once the app has started."""
    path = next(p for p, r in embedded_results(report_text).items() if r["name"] == result_name)
    script = (
        "<script>(function open() {\n"
        "  if (typeof app === 'undefined' || !app) { return setTimeout(open, 50); }\n"
        f"  app.showCategory({json.dumps(category)});\n"
        f"  app.setView({{content: 'html', contentPath: results[{json.dumps(path)}].data_uri, "
        f"resultPath: {json.dumps(path)}}});\n"
        "})();</script>\n"
    )
    end = report_text.rindex("</body>")
    return report_text[:end] + script + report_text[end:]


def run_chromium(
    url: str, *args: str, size: str = "1400,900", budget_ms: int = 10000, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Headless Debian chromium on ``url`` with a fresh profile; ``args`` e.g. --dump-dom, --screenshot=X."""
    with tempfile.TemporaryDirectory(prefix="vidcap-chromium-") as profile:
        cmd = [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size}",
            f"--virtual-time-budget={budget_ms}",
            *args,
            url,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
