"""The source layout and the layer contract of DESIGN.md."""

import shutil
import subprocess
import sys

from conftest import REPO


def test_platform_is_a_source_root_not_a_package():
    assert not (REPO / "platform" / "__init__.py").exists()
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system())"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "Linux"


def test_importing_rsir_and_the_pure_library_never_imports_ray():
    code = (
        "import sys, rsir, rsir.models, rsir.losses, rsir.config, rsir.retrieval.composed, "
        "rsir.retrieval.rerank, rsir.metrics.retrieval, rsir.data.schema, rsir.data.demo_world, "
        "rsir.data.transforms, rsir.data.converters, rsir.data.enrichment, rsir.data.detection, "
        "rsir.data.translation, rsir.optim, rsir.training_step; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


def test_import_linter_contract_holds():
    exe = shutil.which("lint-imports", path=str(REPO / ".venv" / "bin")) or shutil.which(
        "lint-imports")
    assert exe, "import-linter is a dev dependency"
    out = subprocess.run([exe], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout


def test_ruff_finds_nothing():
    exe = shutil.which("ruff", path=str(REPO / ".venv" / "bin")) or shutil.which("ruff")
    assert exe, "ruff is a dev dependency"
    out = subprocess.run([exe, "check", "platform", "tests", "jobs", "bench"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
