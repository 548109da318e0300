"""Job arrays: `probekit run --shard I/N` and `probekit aggregate RUN_DIR` (issue 21)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from probekit import SpecError, run

SPEC = {
    "name": "shards", "seed": 0, "seeds": [0, 1, 2], "device": "cpu", "threads": 1,
    "model": {"type": "module", "factory": "probekit.testing:mlp", "kwargs": {"in_features": 64, "hidden": 32},
              "train": {"epochs": 2, "batch_size": 64}},
    "data": {"type": "digits", "batch_size": 128},
    "probe": {"type": "linear", "layers": ["2", "4"]},
}


def _cli(tmp_path, *args):
    env = {**os.environ, "PROBEKIT_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "probekit", *args], capture_output=True, text=True, env=env)


def _spec(tmp_path, **changes):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return path


def _results(run_dir: Path) -> dict[str, bytes]:
    """Every result file of a run directory as bytes: tables and figures as they are, metrics.json
    without its provenance (date, host, timings), the report without its timings and provenance."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if not p.is_file() or "checkpoints" in p.parts:
            continue
        if p.suffix in (".csv", ".png", ".svg"):
            out[rel] = p.read_bytes()
        elif p.name == "metrics.json":
            data = json.loads(p.read_text())
            data.pop("provenance", None)
            out[rel] = json.dumps(data, sort_keys=True).encode()
        elif p.name == "report.md":
            text = p.read_text()
            head, _, rest = text.partition("## Provenance")
            spec = rest[rest.index("## Spec"):]
            out[rel] = "\n".join(line for line in (head + spec).splitlines()
                                 if not line.startswith("Timings:")).encode()
    return out


def test_parts_in_any_order_then_aggregate_give_one_runs_results(tmp_path):
    spec = _spec(tmp_path)
    whole = _cli(tmp_path, "run", str(spec), "-o", str(tmp_path / "whole"), "-q")
    assert whole.returncode == 0, whole.stderr
    parts = tmp_path / "parts"
    for i in (2, 0):
        res = _cli(tmp_path, "run", str(spec), "-o", str(parts), "-q", "--shard", f"{i}/3")
        assert res.returncode == 0, res.stderr
        assert f"part {i}/3 done" in res.stdout and "still missing" in res.stdout
    assert not (parts / "metrics.json").exists()  # nothing combined before every part finished
    res = _cli(tmp_path, "aggregate", str(parts))
    assert res.returncode == 2
    assert "parts not finished: seed 1 (--shard 1/3)" in res.stderr, res.stderr
    last = _cli(tmp_path, "run", str(spec), "-o", str(parts), "-q", "--shard", "1/3")
    assert last.returncode == 0, last.stderr
    assert last.stdout.startswith("done:")  # the last part to finish combined them
    expected = _results(tmp_path / "whole")
    assert {k for k in expected if "/" not in k} >= {"results.csv", "metrics.json", "report.md"}
    assert any(k.startswith("figures/") for k in expected)
    assert _results(parts) == expected
    again = _cli(tmp_path, "aggregate", str(parts))  # by hand: the same again
    assert again.returncode == 0, again.stderr
    assert _results(parts) == expected
    logs = sorted(p.name for p in (parts / "shards").iterdir())
    assert logs == ["0-of-3.log", "1-of-3.log", "2-of-3.log"]
    # seed_processes: the same split, as child processes of one run that combines them
    side = _cli(tmp_path, "run", str(spec), "-o", str(tmp_path / "side"), "-q", "--set", "seed_processes=2")
    assert side.returncode == 0, side.stderr
    assert "seeds [0, 1, 2] in 2 processes at once" in (tmp_path / "side" / "log.txt").read_text()
    found = {k: v for k, v in _results(tmp_path / "side").items() if not k.endswith("report.md")}
    assert found == {k: v for k, v in expected.items() if not k.endswith("report.md")}  # the spec differs


def test_a_part_resumes_alone_and_keeps_its_finished_seeds(tmp_path):
    spec = _spec(tmp_path, seeds=[0, 1, 2, 3])
    parts = tmp_path / "parts"
    first = run(spec, parts, shard="0/2")
    assert first["seeds"] == [0, 2] and first["missing"] == "seeds 1, 3 (--shard 1/2)"
    with pytest.raises(SpecError, match="part 0/2 ran before") as err:
        run(spec, parts, shard="0/2")
    assert err.value.path == "--shard"
    (parts / "seeds" / "2" / "metrics.json").unlink()  # as if killed before seed 2 finished
    kept = (parts / "seeds" / "0" / "metrics.json").read_bytes()
    again = run(spec, parts, shard="0/2", resume=True)
    assert again["seeds"] == [0, 2]
    assert (parts / "seeds" / "0" / "metrics.json").read_bytes() == kept
    assert "seed 0 (1/2): finished before; kept" in (parts / "shards" / "0-of-2.log").read_text()
    combined = run(spec, parts, shard="1/2")
    assert combined["seeds"] == [0, 1, 2, 3] and set(combined["per_seed"]) == {"0", "1", "2", "3"}


@pytest.mark.parametrize("shard, changes, words", [
    ("3/3", {}, "not a part of a job array"),
    ("1", {}, "not a part of a job array"),
    ("0/4", {}, "3 independent parts"),
    ("0/2", {"seeds": None}, "one part only"),
])
def test_impossible_parts_are_refused_before_anything_runs(tmp_path, shard, changes, words):
    spec = _spec(tmp_path, **changes)
    with pytest.raises(SpecError, match=words) as err:
        run(spec, tmp_path / "run", shard=shard)
    assert err.value.path == "--shard"
    assert not (tmp_path / "run").exists()


def test_overwrite_and_a_changed_spec_are_refused_for_a_part(tmp_path):
    spec = _spec(tmp_path)
    with pytest.raises(SpecError, match="--overwrite cannot be used with --shard"):
        run(spec, tmp_path / "run", shard="0/3", overwrite=True)
    run(spec, tmp_path / "run", shard="0/3")
    changed = _spec(tmp_path, probe={**SPEC["probe"], "layers": ["2"]})
    with pytest.raises(SpecError, match="the spec differs") as err:
        run(changed, tmp_path / "run", shard="1/3")
    assert err.value.path == "--shard"


def test_aggregate_refuses_what_is_not_a_run_of_parts(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("x")
    res = _cli(tmp_path, "aggregate", str(tmp_path / "thesis"))
    assert res.returncode == 2 and "not a probekit run directory" in res.stderr
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "x"
