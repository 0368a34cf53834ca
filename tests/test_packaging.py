"""The distribution operators install (Dockerfile: `pip install .`) carries every module and migration."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_every_module_and_migration(tmp_path):
    # Built from a clean copy: a stale build/ folder in the work tree would hide a missing package.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "node_modules", "build", "var", "*.egg-info", "__pycache__", "bench", "client-examples"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("webhost_sync-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        str(p.relative_to(ROOT))
        for package in ("sync_server", "storage", "api")
        for p in (ROOT / package).rglob("*")
        if p.suffix in (".py", ".sql") and "__pycache__" not in p.parts
    }
    assert expected, "no sources found"
    assert expected <= shipped, sorted(expected - shipped)
    # the dispatcher web app (built by `make js` into api/app_static): served from the wheel alone
    built = {str(p.relative_to(ROOT)) for p in (ROOT / "api" / "app_static").rglob("*") if p.is_file()}
    assert "api/app_static/index.html" in built, "the web app is not built: run `make js`"
    assert any(p.endswith(".js") for p in built) and built <= shipped, sorted(built - shipped)
