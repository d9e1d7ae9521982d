"""The release artefacts, built as a release builds them and used as an operator uses them.

The wheel is built from this checkout (`python -m build`), installed into a fresh venv
(never this project's editable one) and must run `scripts/demo.sh` with nothing but that
venv's bin first in PATH: a module missing from the wheel, an entry point that no longer
resolves or a dependency left out of pyproject.toml fails here, not on an operator's host.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import reconciler

ROOT = Path(__file__).resolve().parent.parent
LICENSE = ROOT / "LICENSE"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build", reason="the `build` package is missing; "
                        "install it with: .venv/bin/pip install build")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_license_file_is_apache_2_as_declared() -> None:
    text = LICENSE.read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression (PEP 639), not a table
    assert "version" not in project and "version" in project["dynamic"]


def test_wheel_and_sdist_carry_license_and_one_version(dist: Path) -> None:
    wheel = _one(dist, "*.whl")
    sdist = _one(dist, "*.tar.gz")
    version = reconciler.__version__
    assert f"-{version}-" in wheel.name and sdist.name.endswith(f"-{version}.tar.gz")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert licenses, names
        assert zf.read(licenses[0]) == LICENSE.read_bytes()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    assert meta["Version"] == version
    assert meta["License-Expression"] == "Apache-2.0"
    with tarfile.open(sdist) as tf:
        members = [m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name]
        top = sdist.name.removesuffix(".tar.gz")
        extracted = tf.extractfile(f"{top}/LICENSE")
        assert extracted is not None and extracted.read() == LICENSE.read_bytes()
    # The tests need the whole repository (configs, scripts, docs, units): none ship
    # rather than some without what they import.
    assert not [m for m in members if m.startswith(("tests/", "bench/"))], members


def test_wheel_in_a_fresh_venv_runs_the_demo(dist: Path, tmp_path: Path) -> None:
    wheel = _one(dist, "*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    # The dependencies come from the configured index (pip's cache makes this quick).
    done = subprocess.run([str(bin_dir / "pip"), "install", "--quiet",
                           "--disable-pip-version-check", "--find-links", str(dist), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLIPSTREAM_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin:/bin"
    env["TMPDIR"] = str(tmp_path)
    version = subprocess.run(["slipstream-reconciler", "--version"], capture_output=True,
                             text=True, env=env, timeout=60)
    assert version.stdout.strip() == f"slipstream-reconciler {reconciler.__version__}"
    # The installed package, not this checkout's sources, must be what runs.
    where = subprocess.run(["python", "-c", "import reconciler; print(reconciler.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert where.stdout.startswith(str(venv)), where.stdout
    demo = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "Traceback" not in demo.stdout + demo.stderr
    assert "The demo node is stopped" in demo.stdout


def test_the_workflows_tagged_git_install_works(tmp_path: Path) -> None:
    """configs/ci/github-actions.yml installs `slipstream-reconciler @ git+URL@vX.Y.Z`: the
    same requirement, with this repository's committed HEAD tagged in a clone standing in
    for the project's git host, installs into a fresh venv and runs."""
    import yaml

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the project")
    spec = yaml.safe_load((ROOT / "configs" / "ci" / "github-actions.yml").read_text())[
        "env"]["SLIPSTREAM_RECONCILER"]
    clone = tmp_path / "slipstream-reconciler"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)],
                   check=True, timeout=120)
    tag = spec.rsplit("@", 1)[1]
    subprocess.run(["git", "-C", str(clone), "tag", tag], check=True, timeout=60)
    local = re.sub(r"git\+https://\S+@", f"git+file://localhost{clone}@", spec)
    assert local != spec and local.endswith(f"@{tag}")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", local], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    version = subprocess.run([str(venv / "bin" / "slipstream-reconciler"), "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"slipstream-reconciler {tag.removeprefix('v')}"
