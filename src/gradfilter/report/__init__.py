"""Report pages: one self-contained HTML file per selection and per benchmark (no torch here).

Every page is built from files alone (a statistics table, the data, run records, a
benchmark's results.json), never from the live objects of a run, so `gradfilter report` can
rebuild any page later. `page` assembles HTML (inline CSS, images as data URIs, no script, a
Content-Security-Policy that forbids any request), `plots` draws matplotlib figures,
`selection` says what a selection's page shows, `benchmarks` what a benchmark's page shows.
"""

from __future__ import annotations

REPORT_NAME = "report.html"
