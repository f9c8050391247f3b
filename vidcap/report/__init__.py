"""The build report: a summary page, histograms (SVG) and a caption gallery (one self-contained HTML).

``charts`` draws the histograms, ``gallery`` picks the records and their frames (contact sheets, the
record -> shard -> manifest join), ``pages`` renders the Jinja2 templates in ``templates/``, and
``build`` ties them together for the workflow's ``build_report`` rule.
"""

from vidcap.report.build import build_report

__all__ = ["build_report"]
