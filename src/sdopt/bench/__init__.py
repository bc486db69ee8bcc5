"""Benchmarks: run artifacts side by side on the same prompts and seeds, measure speed, memory
and quality against a reference, and write reports (runner.py, worker.py, quality.py,
machine.py, profiles.py, report.py, html.py); the gate (gate.py) compares reports."""
