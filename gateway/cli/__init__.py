"""The ``gateway`` command: run, check, status, read, write, scan, demo, bench; its text output.
Nothing imports this package.
"""
