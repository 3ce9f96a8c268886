"""Benchmarks of the function app against the offline rig: `.venv/bin/python -m bench [--smoke|--huge]`.

Every time is a ratio against a baseline measured in the same run, or a count: the machines this
runs on are small and noisy. See `bench/__main__.py` for the command, `bench/core.py` for a run,
`bench/copies.py` and `bench/runs.py` for what is measured and how.
"""
