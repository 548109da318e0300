"""Run files follow the process umask, as any other program's files do (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

import probekit


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_run_files_follow_the_umask(tmp_path, monkeypatch, digits_spec, umask):
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    spec = digits_spec()
    spec["model"]["train"]["epochs"] = 1
    spec["data"].update(limit=256, test_limit=128)
    old = os.umask(umask)
    try:
        probekit.run(spec, tmp_path / "run")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    folders = [tmp_path / "run", *(p for p in (tmp_path / "run").rglob("*") if p.is_dir())]
    names = {p.name for p in files}
    assert {"spec.yaml", "metrics.json", "report.md", "report.html", "log.txt"} <= names
    assert any(p.parent.name == "checkpoints" for p in files) and any(p.suffix == ".png" for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p
    for p in folders:
        assert stat.S_IMODE(p.stat().st_mode) == 0o777 & ~umask, p
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert cached
    for p in cached:
        assert stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 & ~umask, p  # group/others can read
