"""The end-to-end load harness behind ``make bench`` and ``make bench-gate`` (DESIGN §10).

``benchmarks/loadtest.py`` is the entry point; this package holds its parts: the processes
(:mod:`.system`, :mod:`.servers`), the load generators (:mod:`.clients`) and the report
(:mod:`.report`).
"""
