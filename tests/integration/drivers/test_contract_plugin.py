"""The contract suite run against third-party drivers, the way drivers/README.md tells an author to.

A package (tests/support/thirdparty.py) registers its drivers and harness through entry points, and
``pytest tests/integration/drivers/test_contract.py -k acme`` runs the suite against them in a
child process: the well-behaved driver passes, the sloppy one fails exactly the rules it breaks,
and a driver without a harness is skipped (only its static checks run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = pytest.mark.integration

ENTRY_POINTS = """\
[gateway.drivers]
acme = tests.support.thirdparty:AcmeDriver
acme_sloppy = tests.support.thirdparty:SloppyDriver
acme_bare = tests.support.thirdparty:AcmeDriver

[gateway.driver_harnesses]
acme = tests.support.thirdparty:harness
acme_sloppy = tests.support.thirdparty:harness
"""

# Live tests of a driver without inspect and write: the optional ones are not collected for it.
LIVE = ("test_poll_returns_a_well_formed_result", "test_close_is_safe_before_open_and_twice",
        "test_poll_after_close_does_what_the_docstring_says", "test_poll_never_sleeps_to_pace_itself",
        "test_silent_device_makes_poll_raise_driver_error")
STATIC = ("test_import_loads_no_heavy_library", "test_config_forbids_unknown_keys", "test_driver_has_a_harness")


def outcomes(report: Path) -> dict[str, str]:
    """test id -> passed / failed / skipped, from a JUnit XML report."""
    found = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        found[case.get("name", "")] = "failed" if kinds & {"failure", "error"} else kinds.pop() if kinds else "passed"
    return found


def test_third_party_drivers_run_through_the_suite(tmp_path: Path) -> None:
    dist = tmp_path / "acme_gateway-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-gateway\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    report = tmp_path / "report.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         "tests/integration/drivers/test_contract.py", "-k", "acme"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert report.exists(), done.stdout + done.stderr
    expected = {f"{test}[{driver}]": "passed" for test in (*STATIC, *LIVE) for driver in ("acme", "acme_sloppy")}
    expected |= {f"{test}[acme_bare]": "passed" for test in STATIC}
    expected["test_driver_has_a_harness[acme_bare]"] = "skipped"
    for broken in ("test_config_forbids_unknown_keys", "test_poll_never_sleeps_to_pace_itself",
                   "test_poll_after_close_does_what_the_docstring_says"):
        expected[f"{broken}[acme_sloppy]"] = "failed"
    assert outcomes(report) == expected, done.stdout[-3000:]
    assert done.returncode == 1  # the sloppy driver's failures fail the run
