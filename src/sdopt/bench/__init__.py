"""Benchmarks: run artifacts side by side on the same prompts and seeds, measure speed, memory
and quality against a reference, and write reports (artifacts.py: what is compared; runner.py:
the workers; worker.py; assemble.py: the report from their results; profiles.py, report.py,
html.py); the gate (gate.py) compares reports. The image metrics (sdopt.quality) and the machine's
fingerprint (sdopt.machine) are the bench's and the decoder's and shapes training's alike."""
