"""Fixtures for the audit tests: one simulated month, written once, copied per tampering."""

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from audit.bundle import MANIFEST, dumps_json, list_files, sha256_file
from audit.simulate import Scenario, build_scenario, make_bundle

ROOT = Path(__file__).resolve().parents[2]
TR7_AUDIT = ROOT / ".venv" / "bin" / "tr7-audit"
LATE = 40  # lines logged after the month was closed (the fork's late copy among them)


@pytest.fixture(scope="session")
def scenario() -> Scenario:
    # 20-minute polls keep each verification of the tamper tests short on a busy CI host; the
    # default (10 minutes) is exercised by test_simulate and the demo.
    return build_scenario(interval=1200)


@pytest.fixture(scope="session")
def pristine(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(scenario, tmp_path_factory.mktemp("pristine") / "bundle",
                       close_at_size=len(scenario.leaves) - LATE)


@pytest.fixture
def bundle(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the pristine bundle that a test may tamper with."""
    return Path(shutil.copytree(pristine, tmp_path / "bundle"))


def rehash(root: Path) -> None:
    """Recompute manifest.json as a forger who can edit files would: the manifest alone proves nothing."""
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"] = {rel: sha256_file(root / rel) for rel in list_files(root) if rel != MANIFEST}
    (root / MANIFEST).write_text(dumps_json(manifest))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def edit_lines(root: Path, rel: str, fn: Callable[[list[str]], list[str]]) -> None:
    path = root / rel
    lines = path.read_text().splitlines()
    path.write_text("".join(x + "\n" for x in fn(lines)))


def edit_json(root: Path, rel: str, fn: Callable[[dict], None]) -> None:
    doc = json.loads((root / rel).read_text())
    fn(doc)
    (root / rel).write_text(dumps_json(doc))


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    assert TR7_AUDIT.exists(), f"console script missing: {TR7_AUDIT} (pip install -e .)"
    return subprocess.run([str(TR7_AUDIT), *args], capture_output=True, text=True, timeout=300,
                          check=False, env={"PATH": str(Path(sys.executable).parent), "LANG": "C.UTF-8"})


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed `tr7-audit` console script as a user would."""
    return _run_cli


@pytest.fixture
def forge() -> "Forge":
    return Forge()


class Forge:
    """What someone who can edit the bundle's files (but holds no collector key) can do."""

    rehash = staticmethod(rehash)
    b64url = staticmethod(b64url)
    unb64url = staticmethod(unb64url)
    edit_lines = staticmethod(edit_lines)
    edit_json = staticmethod(edit_json)
