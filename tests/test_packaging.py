"""The installed layout: one ``terraloom`` namespace, and CLIs a user's own files cannot shadow.

Builds the wheel, installs it into a fresh virtual environment (its dependencies are taken from
the project's environment through a path entry, so nothing is downloaded), lists the wheel's
top-level names and runs every console script's ``--help`` from a directory that holds a
``model.py`` and a ``pipeline.py`` that would break any import of a bare top-level module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("terraloom-*.whl")
    return whl


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    on_disk = {
        "terraloom." + ".".join(init.parent.relative_to(ROOT).parts)
        for stage in mapping.values()
        for init in (ROOT / stage).rglob("__init__.py")
    }
    assert on_disk == listed


def test_the_wheel_installs_only_the_terraloom_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"terraloom"}
    # package data travels: the registry's JSON exports and the STAC extension schemas
    assert any(n.startswith("terraloom/schemas/json/") and n.endswith(".json") for n in names)
    assert any(n.startswith("terraloom/pipeline/publish/stac_schemas/") for n in names)


def test_console_scripts_run_beside_a_users_model_and_pipeline_modules(
    wheel: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The project's environment supplies the dependencies, after the fresh site-packages.
    Path(site, "zz_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "user_project"
    work.mkdir()
    for name in ("model.py", "pipeline.py", "schemas.py", "tokenize_jobs.py", "storage.py"):
        (work / name).write_text("raise SystemExit('the user module was imported')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for script, target in PYPROJECT["project"]["scripts"].items():
        module = target.split(":")[0]
        package = module.rsplit(".", 1)[0] if module.endswith((".cli", ".demo")) else module
        for argv in ([str(env_dir / "bin" / script)], [str(py), "-m", package]):
            run = subprocess.run(
                [*argv, "--help"], cwd=work, env=env, capture_output=True, text=True
            )
            assert run.returncode == 0, (argv, run.stdout[-1000:], run.stderr[-2000:])
            assert "usage:" in run.stdout, argv
        where = subprocess.run(
            [str(py), "-c", f"import {module} as m; print(m.__file__)"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert where.startswith(site), (module, where)
