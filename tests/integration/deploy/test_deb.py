"""The Debian package (make deb): built here for this machine's Python and architecture only, its
fields and files read back with dpkg-deb, lintian, shellcheck of the maintainer scripts, and the
scripts' install / upgrade / take-over / remove / purge logic run into a throwaway root
(``DPKG_ROOT``, as dpkg passes it), with nothing installed on this machine.

Needs a package index once (pip builds the wheels, as in test_deploy.py; CI has PyPI).
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import __version__
from tests.support import REPO
from tests.support.fakeroot import fresh_root
from tests.support.needs import have_tool, require_tool, unavailable

pytestmark = pytest.mark.integration

DEPLOY = REPO / "deploy"
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
ARCH = platform.machine()
SCRIPTS = ("preinst", "postinst", "prerm", "postrm")
VENV_LINK = "usr/lib/city-gateway/venv"


def run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, check=False, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, with wheels for this machine only (make deb carries six wheel sets). Built once per
    run: pytest-xdist workers share it through a directory of their common base and a lock."""
    require_tool("dpkg-deb", "dpkg")
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp().parent / f"deb-{run_id}" if run_id else tmp_path_factory.mktemp("deb")
    base.mkdir(exist_ok=True)
    with open(base / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = base / "dist" / f"city-gateway_{__version__}_all.deb"
        if not built.exists():
            build_deb(base / "wheelhouse", base / "dist")
    return built


def build_deb(house: Path, out: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = run([*pip, "wheel", "--quiet", "-w", str(house), str(REPO)])
    got_pip = run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(house), "pip"])
    if built.returncode or got_pip.returncode:
        unavailable(f"the wheels cannot be built here (no index?): {built.stderr[-300:]}{got_pip.stderr[-300:]}")
    env = dict(os.environ, PIP=str(Path(sys.executable).parent / "pip"), DEB_COMPRESSION="gzip")
    done = run(["bash", str(DEPLOY / "debian/build-deb.sh"), str(house), str(out), PY, ARCH], env=env)
    assert done.returncode == 0, done.stdout + done.stderr


def field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), name]).stdout.strip()


def control_file(deb: Path, name: str, into: Path) -> Path:
    """One file of the control archive (a maintainer script), extracted to ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    assert run(["dpkg-deb", "-e", str(deb), str(into)]).returncode == 0
    return into / name


def test_control_fields(deb: Path) -> None:
    assert field(deb, "Package") == "city-gateway"
    assert field(deb, "Version") == __version__
    assert field(deb, "Architecture") == "all"
    assert field(deb, "Depends").split(", ") == ["python3 (>= 3.11)", "python3 (<< 3.14)", "passwd"]
    assert field(deb, "Maintainer") == "city-gateway maintainers <gateway-maintainers@example.org>"  # a role
    assert f"{PY}-{ARCH}" in field(deb, "Description")


def test_contents(deb: Path, tmp_path: Path) -> None:
    listing = run(["dpkg-deb", "-c", str(deb)]).stdout
    paths = {line.split()[5].removeprefix("./") for line in listing.splitlines()}
    assert not any(p.startswith(("opt", "etc")) for p in paths), paths  # no /opt; the config is no conffile
    assert "usr/bin/gateway -> ../lib/city-gateway/venv/bin/gateway" in listing
    wheels = {p.rsplit("/", 1)[1] for p in paths if p.startswith("usr/share/city-gateway/wheels/")}
    assert any(w.startswith(f"city_gateway-{__version__}-") for w in wheels)
    assert any(w.startswith("pip-") for w in wheels)
    assert {"usr/share/city-gateway/example.yaml", "lib/systemd/system/gateway.service",
            "usr/lib/systemd/journald.conf.d/60-city-gateway.conf", "usr/share/doc/city-gateway/copyright",
            "usr/share/doc/city-gateway/changelog.gz"} <= paths
    tree = tmp_path / "tree"
    assert run(["dpkg-deb", "-x", str(deb), str(tree)]).returncode == 0
    unit = (tree / "lib/systemd/system/gateway.service").read_text()
    assert "/opt/" not in unit and "ExecStart=/usr/lib/city-gateway/venv/bin/gateway run " in unit
    # The same unit as deploy/'s but for its paths: one unit, not two.
    ours = (DEPLOY / "gateway.service").read_text().replace("/opt/city-gateway/venv/", "/usr/lib/city-gateway/venv/")
    strip = lambda text: [ln for ln in text.splitlines() if not ln.startswith(("#", "Documentation="))]  # noqa: E731
    assert strip(unit) == strip(ours)
    assert (tree / "usr/share/city-gateway/example.yaml").read_text() == (REPO / "config/example.yaml").read_text()
    control = tmp_path / "control"
    assert not control_file(deb, "conffiles", control).exists()
    assert "interest-noawait /usr/bin/python3" in (control / "triggers").read_text()


def test_lintian_reports_no_error_and_no_unexplained_warning(deb: Path) -> None:
    lintian = require_tool("lintian", "lintian")
    done = run([lintian, "--fail-on", "error,warning", str(deb)])
    found = [ln for ln in done.stdout.splitlines() if ln[:2] in ("E:", "W:")]
    assert done.returncode == 0 and not found, done.stdout + done.stderr


def test_maintainer_scripts_are_shellcheck_clean(deb: Path, tmp_path: Path) -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    scripts = [str(control_file(deb, name, tmp_path)) for name in SCRIPTS]
    done = run([shellcheck, *scripts, str(DEPLOY / "lib/setup.sh"), str(DEPLOY / "debian/build-deb.sh"),
                str(DEPLOY / "debian/armhf-wheels.sh")])
    assert done.returncode == 0, done.stdout


# -- the maintainer scripts in a throwaway root ------------------------------------------------------


class Sandbox:
    """A root with the package unpacked as dpkg would, and its maintainer scripts run with
    DPKG_ROOT set (what `dpkg --root` does): systemd is never asked, files are edited in the root."""

    def __init__(self, deb: Path, base: Path, bin_dir: Path | None = None) -> None:
        self.deb, self.root, self.control = deb, fresh_root(base / "root"), base / "control"
        assert run(["dpkg-deb", "-e", str(deb), str(self.control)]).returncode == 0
        # python3 is the Python running these tests (a venv-capable one), as Debian's would be.
        self.bin = bin_dir or base / "bin"
        self.bin.mkdir(exist_ok=True)
        if not (self.bin / "python3").exists():
            (self.bin / "python3").symlink_to(sys._base_executable)  # type: ignore[attr-defined]

    def unpack(self) -> None:
        assert run(["dpkg-deb", "-x", str(self.deb), str(self.root)]).returncode == 0

    def script(self, name: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, DPKG_ROOT=str(self.root), PATH=f"{self.bin}:{os.environ['PATH']}")
        done = run(["bash", str(self.control / name), *args], env=env)
        if ok:
            assert done.returncode == 0, f"{name} {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def install(self, previous: str = "") -> str:
        """preinst, unpack, postinst: an install (``previous`` empty) or an upgrade from it."""
        self.script("preinst", "upgrade" if previous else "install", *([previous] if previous else []))
        self.unpack()
        return self.script("postinst", "configure", *([previous] if previous else [])).stdout

    def path(self, rel: str) -> Path:
        return self.root / rel


def venv_dirs(box: Sandbox) -> list[str]:
    return sorted(p.name for p in box.path("usr/lib/city-gateway").glob("venv.*"))


# pip installs the program into a venv three times here: some 5 s of CPU each on an idle machine.
@pytest.mark.timeout(600)
def test_install_upgrade_remove_purge(deb: Path, tmp_path: Path) -> None:
    box = Sandbox(deb, tmp_path)
    out = box.install()
    # The venv, built offline from the bundled wheels, behind the link the unit and /usr/bin use.
    link = box.path(VENV_LINK)
    assert link.is_symlink() and os.readlink(link).startswith("venv.")
    version = run([str(link / "bin/gateway"), "version"]).stdout
    commit = run(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=12"]).stdout.strip()
    assert version.startswith(f"city-gateway {__version__} (commit {commit}, Python {PY}.")  # stamped at build
    assert not (link / "bin/pip").exists()  # --without-pip: the bundled pip ran from outside
    config = box.path("etc/gateway/gateway.yaml")
    assert config.read_text() == (REPO / "config/example.yaml").read_text()
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert oct(box.path("var/lib/gateway").stat().st_mode & 0o777) == "0o750"
    assert "it is the example" in out  # a first install with the example config starts nothing
    if os.geteuid() == 0:
        gid = next(ln.split(":")[2] for ln in box.path("etc/group").read_text().splitlines()
                   if ln.startswith("gateway:"))
        assert config.stat().st_gid == int(gid)
        assert "gateway" in box.path("etc/group").read_text().split("dialout:")[1].splitlines()[0]
    if have_tool("systemctl", "systemd"):
        wants = box.path("etc/systemd/system/multi-user.target.wants/gateway.service")
        assert os.readlink(wants) == "/lib/systemd/system/gateway.service"

    # An upgrade: the technician's config and the buffer untouched, the venv replaced by a new one.
    config.write_text(config.read_text() + "# edited by the technician\n")
    box.path("var/lib/gateway/buffer.db").write_bytes(b"readings")
    box.path("var/lib/gateway/seq.json").write_text('{"meter-1": 40600}')
    first = venv_dirs(box)
    box.install(previous=__version__)
    assert config.read_text().endswith("# edited by the technician\n")
    assert box.path("var/lib/gateway/buffer.db").read_bytes() == b"readings"
    assert box.path("var/lib/gateway/seq.json").read_text() == '{"meter-1": 40600}'
    assert len(venv_dirs(box)) == 1 and venv_dirs(box) != first  # the old one removed
    assert run([str(link / "bin/gateway"), "version"]).returncode == 0

    # python3 upgraded (the trigger): the same minor version leaves the venv alone; a venv whose
    # Python is gone (bookworm's 3.11 after an upgrade to trixie) is built anew.
    second = venv_dirs(box)
    assert "Python changed" not in box.script("postinst", "triggered", "/usr/bin/python3").stdout
    assert venv_dirs(box) == second
    (link / "bin/python").unlink()
    (link / "bin/python").symlink_to("/usr/bin/python3.10-gone")
    assert f"Python changed (gone -> {PY})" in box.script("postinst", "triggered", "/usr/bin/python3").stdout
    assert venv_dirs(box) != second and run([str(link / "bin/gateway"), "version"]).returncode == 0

    # apt remove: the program goes; config and buffered readings stay.
    box.script("prerm", "remove")
    box.script("postrm", "remove")
    assert not box.path("usr/lib/city-gateway").exists()
    assert config.read_text().endswith("# edited by the technician\n")
    assert box.path("var/lib/gateway/buffer.db").exists()
    # apt purge: those go too.
    box.script("postrm", "purge")
    assert not box.path("etc/gateway").exists() and not box.path("var/lib/gateway").exists()


VALID = (REPO / "config/example.yaml").read_text().replace("pkt-rd-0001", "pkt-rd-0002")  # edited


@pytest.mark.timeout(600)
def test_takes_over_an_install_sh_installation(deb: Path, tmp_path: Path) -> None:
    """What deploy/install.sh left goes, but for the config and the data; that config (a bad edit
    here) is checked, named and nothing starts."""
    box = Sandbox(deb, tmp_path)
    # What install.sh leaves (test_deploy.py checks that it does): its program in /opt, a link in
    # /usr/local/bin, its unit enabled in /etc/systemd/system, its journald drop-in; config and data.
    old_gateway = box.path("opt/city-gateway/venv/bin/gateway")
    old_gateway.parent.mkdir(parents=True)
    old_gateway.write_text("#!/bin/sh\n")
    box.path("usr/local/bin").mkdir(parents=True)
    box.path("usr/local/bin/gateway").symlink_to("/opt/city-gateway/venv/bin/gateway")
    units = box.path("etc/systemd/system")
    (units / "multi-user.target.wants").mkdir(parents=True)
    shutil.copy(DEPLOY / "gateway.service", units / "gateway.service")
    (units / "multi-user.target.wants/gateway.service").symlink_to("/etc/systemd/system/gateway.service")
    box.path("etc/systemd/journald.conf.d").mkdir(parents=True)
    shutil.copy(DEPLOY / "journald.conf", box.path("etc/systemd/journald.conf.d/60-city-gateway.conf"))
    box.path("etc/gateway").mkdir()
    bad = VALID.replace("host: broker.example.org", "hots: x")
    box.path("etc/gateway/gateway.yaml").write_text(bad)
    box.path("var/lib/gateway").mkdir(parents=True)
    box.path("var/lib/gateway/buffer.db").write_bytes(b"readings")

    out = box.install()
    assert "taking over the installation made by deploy/install.sh" in out
    for gone in ("opt/city-gateway", "usr/local/bin/gateway", "etc/systemd/system/gateway.service",
                 "etc/systemd/journald.conf.d/60-city-gateway.conf"):
        assert not box.path(gone).exists() and not box.path(gone).is_symlink(), gone
    assert box.path("etc/gateway/gateway.yaml").read_text() == bad
    assert box.path("var/lib/gateway/buffer.db").read_bytes() == b"readings"
    assert "has problems, gateway.service not started" in out
    if have_tool("systemctl", "systemd"):  # enabled again, now the package's unit
        wants = box.path("etc/systemd/system/multi-user.target.wants/gateway.service")
        assert os.readlink(wants) == "/lib/systemd/system/gateway.service"


@pytest.mark.timeout(600)
def test_first_install_with_an_edited_valid_config_would_start(deb: Path, tmp_path: Path) -> None:
    """A config left by an earlier installation, edited and valid: checked and, where systemd runs, started."""
    box = Sandbox(deb, tmp_path)
    box.path("etc/gateway").mkdir()
    box.path("etc/gateway/gateway.yaml").write_text(VALID)
    assert "config /etc/gateway/gateway.yaml: OK; systemd is not running here" in box.install()


def fake_command(bin_dir: Path, name: str, output: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/sh\necho '{output}'\n")
    (bin_dir / name).chmod(0o755)


@pytest.mark.parametrize(("python", "arch", "named"), [
    ("3.12", "amd64", "no wheels in this package for Python 3.12 on x86_64"),
    (PY, "i386", "architecture i386"),
    (PY, "riscv64", "architecture riscv64"),
])
def test_preinst_refuses_what_it_has_no_wheels_for(
    deb: Path, tmp_path: Path, python: str, arch: str, named: str
) -> None:
    if ARCH != "x86_64" and arch == "amd64":
        pytest.skip("the package built here carries wheels for this machine's architecture only")
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "python3", python)
    fake_command(bin_dir, "dpkg", arch)
    box = Sandbox(deb, tmp_path, bin_dir=bin_dir)
    done = box.script("preinst", "install", ok=False)
    assert done.returncode != 0 and named in done.stderr, done.stderr
    assert not any(box.path(p).exists() for p in ("usr", "var", "etc/gateway"))  # nothing was touched
    # The same machine with what the package has: accepted.
    fake_command(bin_dir, "python3", PY)
    fake_command(bin_dir, "dpkg", {"x86_64": "amd64", "aarch64": "arm64"}.get(ARCH, ARCH))
    assert box.script("preinst", "install").returncode == 0
