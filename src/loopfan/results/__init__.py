"""Results of runs: the report schema, checks and gates, comparisons, the HTML page, live export.

Rules of this package: everything here reads a report dict (schema loopfan.report/1) or a run's
progress; nothing here opens connections. matplotlib and prometheus_client are imported only by
the modules that need them, and only when they are used.
"""
