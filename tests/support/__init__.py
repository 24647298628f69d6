"""Helpers shared by the tests: real servers and processes to test against."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository's root, wherever a test file sits
