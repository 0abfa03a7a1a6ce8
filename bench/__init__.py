"""Benchmarks of the sopflow stack (issue 7): `python -m bench.<name>`, or all of them with `make bench`.

Each bench prints a table for people and one JSON line for machines; `bench/RESULTS.md` keeps the latest figures
and what limits them.
"""
