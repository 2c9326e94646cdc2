"""Benchmarks: figures and ratios measured in one run, printed as one table (``just bench``).

Not tests: nothing here asserts. Every figure is printed next to its target (issue 5), and every
ratio is against a baseline timed in the same run on the same machine: a fresh interpreter per
job (``Settings(templates=False)``) and an in-process ``exec`` + call in this very process (what
worker-flash does, with no isolation at all).
"""
