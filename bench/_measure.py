"""Run a command; print its wall time and peak RSS (largest process it waited for) as JSON."""

import json
import resource
import subprocess
import sys
import time

start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
seconds = time.perf_counter() - start
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(
    json.dumps(
        {
            "seconds": seconds,
            "peak_rss_mb": peak_kib / 1024,
            "returncode": proc.returncode,
            "stderr_tail": proc.stderr[-2000:] if proc.returncode else "",
        }
    )
)
