"""Benchmarks: run artifacts side by side on the same prompts and seeds, measure speed, memory
and quality against a reference, and write reports (artifacts.py: what is compared; runner.py:
the workers; worker.py; assemble.py: the report from their results; quality.py, machine.py,
profiles.py, report.py, html.py); the gate (gate.py) compares reports."""
