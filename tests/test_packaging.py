"""The wheel: namespaced packages only, data files included, a light base install.

Builds a real wheel with ``python -m build --wheel`` (in build isolation, as pip and
CI do) from a copy of the source tree, so the checkout is never touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Repository folders and the import names they are installed under.
FOLDERS = {"serq": "serq", "worker": "serq/worker", "client": "serq/client", "schemas": "serq/schemas", "models": "serq/models"}
GENERIC = {"worker", "client", "schemas", "models", "bench", "tests", "samples", "docs"}
HEAVY = {"librosa", "scikit-learn", "scipy", "skops", "soxr", "joblib", "aio-pika", "pipecat-ai"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".cache", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache"))
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = (tmp / "dist").glob("serq-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def names(wheel: zipfile.ZipFile) -> set[str]:
    return set(wheel.namelist())


def metadata(wheel: zipfile.ZipFile):
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(meta).decode())


@pytest.mark.slow
def test_no_generic_top_level_packages(wheel):
    tops = {n.split("/", 1)[0] for n in names(wheel)}
    assert not tops & GENERIC, f"the wheel would install generic top-level modules: {sorted(tops & GENERIC)}"
    assert {t for t in tops if not t.endswith(".dist-info")} == {"serq"}


@pytest.mark.slow
def test_every_module_of_every_folder_is_inside_serq(wheel):
    missing = []
    for folder, target in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            wanted = f"{target}/{path.relative_to(REPO / folder).as_posix()}"
            if wanted not in names(wheel):
                missing.append(wanted)
    assert not missing, f"modules left out of the wheel (add their package to pyproject's `packages`): {missing}"
    for package in ("serq/worker", "serq/worker/engine", "serq/worker/training", "serq/worker/handlers",
                    "serq/worker/services", "serq/transport", "serq/cli", "serq/cli/commands", "serq/client",
                    "serq/schemas", "serq/models"):
        assert f"{package}/__init__.py" in names(wheel)


@pytest.mark.slow
def test_data_files_ship(wheel):
    contents = names(wheel)
    for name in ("model.skops", "model.json", "MODEL_CARD.md"):
        assert f"serq/models/default/{name}" in contents
        assert f"serq/models/default_speaker/{name}" in contents
    assert "serq/worker/engine/filterbanks.npz" in contents  # features need it (features.FILTERBANKS)
    schemas = sorted(p.name for p in (REPO / "schemas" / "json").glob("*.json"))
    assert schemas, "schemas/json/*.json should be generated and committed"
    for name in schemas:
        assert f"serq/schemas/json/{name}" in contents
    if (REPO / "schemas" / "asyncapi.yaml").exists():
        assert "serq/schemas/asyncapi.yaml" in contents
    # The shipped model in the wheel is byte-identical to the repository's.
    assert wheel.read("serq/models/default/model.skops") == (REPO / "models/default/model.skops").read_bytes()


@pytest.mark.slow
def test_console_script_and_light_base_install(wheel):
    (entry,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert re.search(r"^serq\s*=\s*serq\.cli:main$", wheel.read(entry).decode(), re.M)
    requires = metadata(wheel).get_all("Requires-Dist") or []
    base = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    assert {"pika", "pydantic", "numpy", "soundfile"} <= base
    assert not base & HEAVY, f"the base install must stay light, found {sorted(base & HEAVY)}"
    extras = set(metadata(wheel).get_all("Provides-Extra") or [])
    assert {"worker", "bot", "dev", "async", "pipecat", "all"} <= extras
    pipecat = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requires if 'extra == "pipecat"' in r}
    assert "pipecat-ai" in pipecat
    worker = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requires if 'extra == "worker"' in r}
    assert {"librosa", "scikit-learn", "skops", "soxr"} <= worker
