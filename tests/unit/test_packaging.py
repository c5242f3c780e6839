"""What users install (issue 13, item 8): a distribution name that is ours,
the LICENSE that `license = "MIT"` promises, and an sdist that carries the
tests and the service files."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from tests.helpers import REPO

#: The index's "netmon" is an unrelated project; never tell anyone to install it.
FOREIGN = "netmon"
INSTALL_FOREIGN = re.compile(r"pip3? install\s+['\"]?" + FOREIGN + r"(\[|['\"\s]|$)", re.MULTILINE)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_distribution_name_is_not_the_foreign_one():
    project = pyproject()["project"]
    assert project["name"] == "netmond"
    assert project["scripts"] == {"netmond": "netmond.main:main", "netmonctl": "netmonctl.cli:main"}
    # URLs we do not control would send users to a stranger (pyproject says why there are none).
    assert "urls" not in project


def test_no_text_tells_users_to_install_the_foreign_name():
    sources = [REPO / "README.md", REPO / "Makefile", *REPO.glob("*/**/*.py"), *REPO.glob("*/**/*.md")]
    offenders = [str(p.relative_to(REPO)) for p in sources
                 if ".venv" not in p.parts and p.is_file() and INSTALL_FOREIGN.search(p.read_text(errors="replace"))]
    assert offenders == []


def test_license_file_is_the_promised_mit():
    project = pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="`build` not installed (test extra)")
def test_sdist_carries_tests_service_files_and_license(tmp_path):
    # Build from a copy: building writes netmond.egg-info next to pyproject.toml.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info",
                                                             "dist", "build", ".pytest_cache"))
    out = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0 and "setuptools" in out.stderr and "No module named" in out.stderr:
        pytest.skip("setuptools>=77 not installed for an offline build")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("netmond-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    expected = {"LICENSE", "README.md", "pyproject.toml", "Makefile", "tests/conftest.py",
                "tests/unit/test_packaging.py", "tests/integration/test_top.py",
                "netmond/main.py", "netmonctl/cli.py", "common/paths.py",
                # eBPF root mode: the C source and the hook that compiles it at wheel-build time.
                "setup.py", "netmond/backends/ebpf/netmon.bpf.c", "netmond/backends/ebpf/build.py"}
    for folder in ("launchd", "systemd", "tests/data"):
        files = {str(p.relative_to(REPO)) for p in (REPO / folder).rglob("*") if p.is_file()
                 and "__pycache__" not in p.parts}
        assert files, folder
        expected |= files
    assert expected <= names, sorted(expected - names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n.endswith(".bpf.o") for n in names)  # built per machine, never shipped in the sdist
