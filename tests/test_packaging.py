"""The package as users install it: `python -m build` makes a wheel and an sdist whose core needs only jax, numpy and
optax, and the wheel, installed offline into a fresh virtual environment, runs the library example.
"""

import email.parser
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import hrrl_jax

REPO_ROOT = Path(__file__).resolve().parent.parent
CORE = {"jax", "numpy", "optax"}
TRAIN = {"flax", "orbax-checkpoint", "grain", "tensorflow-datasets", "ml-collections", "pillow", "tensorboardx"}
TRAIN |= {"tqdm", "matplotlib", "scikit-learn", "scipy"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory) -> Path:
    """`python -m build` (sdist, then the wheel from it) on a copy of what the sdist holds, so no build output lands
    in the source tree."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "hrrl_jax", source / "hrrl_jax", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    return out


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = only([n for n in archive.namelist() if n.endswith(".dist-info/METADATA")])
        return email.parser.Parser().parsestr(archive.read(name).decode())


def requirements_by_extra(metadata: email.message.Message) -> dict[str, set[str]]:
    """Requires-Dist grouped by the extra that brings it ("" for the core)."""
    groups: dict[str, set[str]] = {}
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        extra = ""
        if requirement.marker is not None:
            extra = re.search(r'extra == "([^"]+)"', str(requirement.marker)).group(1)
        groups.setdefault(extra, set()).add(canonical(requirement.name))
    return groups


def test_build_makes_a_wheel_and_an_sdist_of_the_one_version(dist_dir):
    version = hrrl_jax.__version__
    assert only(sorted(dist_dir.glob("*.whl"))).name.startswith(f"hrrl_jax-{version}-py3-none-any")
    assert only(sorted(dist_dir.glob("*.tar.gz"))).name == f"hrrl_jax-{version}.tar.gz"
    assert "version" not in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def test_the_core_needs_jax_numpy_and_optax_and_the_rest_is_an_extra(dist_dir):
    wheel = only(sorted(dist_dir.glob("*.whl")))
    metadata = wheel_metadata(wheel)
    assert metadata["Version"] == hrrl_jax.__version__
    groups = requirements_by_extra(metadata)
    assert groups[""] == CORE
    assert TRAIN <= groups["train"]
    assert "chex" in groups["test"] and "chex" not in groups[""] | groups["train"]
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    sources = {str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "hrrl_jax").rglob("*.py")}
    concept_files = {str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "hrrl_jax/data/concepts").glob("*.txt")}
    assert sources | concept_files <= set(names)
    assert not [name for name in names if name.startswith(("tests/", "configs/", "examples/"))]


def test_requirements_txt_lists_every_dependency_of_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {canonical(Requirement(r).name) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {canonical(Requirement(r).name) for r in extra}
    declared.discard("hrrl-jax")
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    listed = {canonical(Requirement(line).name) for line in lines if line.strip() and not line.startswith("#")}
    assert declared == listed - {"ruff"}


def core_distributions() -> set[str]:
    """The installed distributions that jax, numpy and optax need, transitively (no extras)."""
    needed, todo = set(), list(CORE)
    while todo:
        name = canonical(todo.pop())
        if name in needed:
            continue
        needed.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return needed


def link_core_packages(target: Path) -> None:
    """Links the top-level files (packages, their .libs and .dist-info) of each core distribution into `target`."""
    target.mkdir()
    for name in core_distributions():
        distribution = importlib.metadata.distribution(name)
        for top in {Path(str(file)).parts[0] for file in distribution.files if not str(file).startswith("..")}:
            source = Path(distribution.locate_file(top))
            if source.exists() and not (target / top).exists():
                (target / top).symlink_to(source)


def test_the_wheel_runs_the_library_example_in_a_fresh_environment(dist_dir, tmp_path):
    """A venv that sees only the core's installed packages (through a .pth file) gets the wheel offline."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.strip()
    )
    link_core_packages(tmp_path / "core")
    (site_packages / "core_packages.pth").write_text(str(tmp_path / "core") + "\n")
    wheel = only(sorted(dist_dir.glob("*.whl")))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--no-cache-dir", str(wheel)],
        check=True,
        capture_output=True,
        env=env,
    )

    shutil.copy(REPO_ROOT / "examples" / "quickstart.py", tmp_path / "quickstart.py")
    run = subprocess.run([python, "quickstart.py"], cwd=tmp_path, check=True, capture_output=True, text=True, env=env)
    concept_distribution = [float(x) for x in run.stdout.split("]")[0].strip("[ ").split()]
    assert len(concept_distribution) == 3 and abs(sum(concept_distribution) - 1) < 1e-5

    probe = (
        "import importlib.util, importlib.metadata, json, hrrl_jax, hrrl_jax.robust; print(json.dumps({"
        "'file': hrrl_jax.__file__, 'version': importlib.metadata.version('hrrl_jax'), "
        "'flax': importlib.util.find_spec('flax') is not None, "
        "'grain': importlib.util.find_spec('grain') is not None}))"
    )
    found = json.loads(
        subprocess.run([python, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True, env=env).stdout
    )
    assert Path(found["file"]).is_relative_to(site_packages), found["file"]
    assert found["version"] == hrrl_jax.__version__
    assert not found["flax"] and not found["grain"]
