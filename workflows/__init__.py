"""Workflow definitions. Deterministic code only: all I/O goes through activities."""
