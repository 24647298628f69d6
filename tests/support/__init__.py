"""Helpers shared by the tests: real servers and processes to test against."""
