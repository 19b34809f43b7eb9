"""The benchmark sweep (scripts/benchmark.py) and its report (scripts/report.py).

A sweep runs every configuration on every prompt, interleaved, and logs one JSON line per run;
the summary and the report are computed from those lines alone, so they always agree.
"""
