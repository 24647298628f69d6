"""Every sample config in the READMEs of the serial and system drivers is a valid config.

A technician copies these samples: each ```yaml block (a ``devices:`` list) must pass the real
config loader, and build its driver, as it is written.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gateway.config.load import load_config
from gateway.driver import DeviceInfo, load_driver
from tests.support import REPO

DRIVERS = REPO / "drivers"
READMES = ["serial_line", "pms5003", "sds011", "system"]


def _samples(driver: str) -> list[str]:
    text = (DRIVERS / driver / "README.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("driver", READMES)
def test_readme_samples_load(driver: str, tmp_path: Path) -> None:
    samples = _samples(driver)
    assert samples, f"drivers/{driver}/README.md has no yaml sample"
    for k, sample in enumerate(samples):
        devices = yaml.safe_load(sample)["devices"]
        config = {"gateway": {"id": "gw", "data_dir": str(tmp_path)}, "mqtt": {"host": "broker"},
                  "devices": devices}
        path = tmp_path / f"sample-{k}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        loaded = load_config(path)
        for spec in loaded.devices:
            assert spec.driver == driver
            cls = load_driver(spec.driver)
            cls(spec.options, DeviceInfo(spec.name, spec.interval))  # builds without touching the port
