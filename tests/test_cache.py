import multiprocessing as mp
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from probekit import _cache as cache_mod
from probekit._cache import CorruptCacheError, FeatureCache, FeatureSet, cache_key


def _batches(data, bs=7):
    def compute(names):
        for i in range(0, len(data["a"]), bs):
            yield {n: data[n][i:i + bs] for n in names}
    return compute


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(cache_mod, "SHARD_BYTES", 200)  # many shards even for tiny data


def test_roundtrip_many_shards_and_random_order(tmp_path, small_shards):
    rng = np.random.default_rng(0)
    data = {"a": rng.standard_normal((50, 3, 4)).astype(np.float32), "labels": np.arange(50)}
    fc = FeatureCache(tmp_path)
    arrays = fc.get({"a": "k1", "labels": "k2"}, _batches(data))
    assert len(arrays["a"]._shards) > 3
    fs = FeatureSet(arrays)
    assert len(fs) == 50 and fs.shape("a") == (3, 4)
    idx = torch.tensor([49, 0, 17, 17, 3])
    b = fs.batch(idx)
    assert np.array_equal(b["a"].numpy(), data["a"][idx.numpy()])
    assert b["labels"].tolist() == [49, 0, 17, 17, 3]
    seen = torch.cat([x["labels"] for x in fs.batches(8, torch.Generator().manual_seed(1))])
    assert sorted(seen.tolist()) == list(range(50))
    assert seen.tolist() != list(range(50))


def test_second_get_does_not_recompute(tmp_path):
    data = {"a": np.ones((5, 2), np.float32)}
    fc = FeatureCache(tmp_path)
    fc.get({"a": "k"}, _batches(data))

    def boom(names):
        raise AssertionError("recomputed")
        yield  # pragma: no cover

    again = fc.get({"a": "k"}, boom)
    assert np.array_equal(again["a"].rows(range(5)), data["a"])


def test_corrupt_shard_is_detected_and_rebuilt(tmp_path, small_shards):
    data = {"a": np.arange(60, dtype=np.float32).reshape(20, 3)}
    fc = FeatureCache(tmp_path)
    fc.get({"a": "k"}, _batches(data))
    shard = tmp_path / "k" / "shard-00001.bin"
    raw = bytearray(shard.read_bytes())
    raw[0] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptCacheError):
        fc.open("k")
    rebuilt = fc.get({"a": "k"}, _batches(data))
    assert np.array_equal(rebuilt["a"].rows(range(20)), data["a"])


def test_fp16_storage(tmp_path):
    data = {"a": np.linspace(0, 1, 40, dtype=np.float32).reshape(10, 4)}
    arrays = FeatureCache(tmp_path).get({"a": "k16"}, _batches(data), dtype="float16")
    out = FeatureSet(arrays).batch(range(10))["a"]
    assert out.dtype == torch.float32
    assert (tmp_path / "k16" / "shard-00000.bin").stat().st_size == 10 * 4 * 2
    assert torch.allclose(out, torch.from_numpy(data["a"]), atol=1e-3)


def _writer(root, key, value, barrier):
    data = {"a": np.full((30, 8), value, np.float32)}
    barrier.wait()
    arr = FeatureCache(root).get({"a": key}, _batches(data))["a"]
    return arr.rows(range(30)).mean()


def _proc(root, key, value, barrier, q):
    q.put(_writer(root, key, value, barrier))


def test_concurrent_runs_share_one_complete_entry(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_proc, args=(str(tmp_path), "same", float(v), barrier, q)) for v in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    means = [q.get(timeout=5), q.get(timeout=5)]
    # both processes read the same, complete entry (whichever computed it first)
    assert means[0] == means[1] and means[0] in (1.0, 2.0)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_cache_key_is_stable_and_sensitive():
    assert cache_key(a=1, b=[1, 2]) == cache_key(b=[1, 2], a=1)
    assert cache_key(a=1) != cache_key(a=2)


def test_failed_compute_leaves_no_entry(tmp_path):
    def bad(names):
        yield {"a": np.zeros((2, 2), np.float32)}
        raise ValueError("model crashed")

    fc = FeatureCache(tmp_path)
    with pytest.raises(ValueError):
        fc.get({"a": "k"}, bad)
    assert not fc.has("k")
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []
    shutil.rmtree(tmp_path)


PARALLEL_SCRIPT = '''
import json, sys
import numpy as np, torch
from probekit import _cache as cache_mod
from probekit import _distributed as distributed
from probekit._cache import FeatureCache

distributed.init_from_env(torch.device("cpu"))
cache_mod.SHARD_BYTES = 200  # several shards per rank
data = np.arange(53 * 6, dtype=np.float32).reshape(53, 2, 3) / 7
asked = []

def compute(names, rows=None):
    rows = range(len(data)) if rows is None else rows
    asked.append([rows.start, rows.stop])
    for i in range(rows.start, rows.stop, 5):
        j = min(i + 5, rows.stop)
        yield {"a": torch.from_numpy(data[i:j]), "labels": torch.arange(i, j)}

arrays = FeatureCache(sys.argv[1]).get({"a": "ka", "labels": "kl"}, compute, length=len(data))
ok = np.array_equal(arrays["a"].rows(np.arange(53)[::-1]), data[::-1]) and arrays["labels"].rows(
    np.arange(53)).tolist() == list(range(53))
with open(f"{sys.argv[2]}-{distributed.rank()}.json", "w") as f:
    json.dump({"rank": distributed.rank(), "asked": asked, "ok": bool(ok)}, f)
distributed.shutdown()
'''


def _torchrun(script, root, nproc=2):
    import json
    import subprocess
    import sys

    out = script.parent / "out"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                          str(script), str(root), str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(Path(f"{out}-{r}.json").read_text()) for r in range(nproc)]


def test_ranks_write_the_shards_of_their_own_rows(tmp_path):
    script = tmp_path / "par.py"
    script.write_text(PARALLEL_SCRIPT)
    out = _torchrun(script, str(tmp_path / "c"))
    assert [r["asked"] for r in out] == [[[0, 26]], [[26, 53]]]  # each rank computed its own half
    assert all(r["ok"] for r in out)  # and every rank reads all rows back
    import json

    manifest = json.loads((tmp_path / "c" / "ka" / "manifest.json").read_text())
    files = [s["file"] for s in manifest["shards"]]
    assert files[0].startswith("r0000-") and files[-1].startswith("r0001-") and len(files) > 4
    assert manifest["length"] == 53 and not list((tmp_path / "c").glob(".*parts"))
    # the entry is an ordinary cache entry: one process reads it without computing
    arr = FeatureCache(tmp_path / "c").get({"a": "ka"}, lambda names: iter(()))["a"]
    assert np.array_equal(arr.rows(range(53)), np.arange(53 * 6, dtype=np.float32).reshape(53, 2, 3) / 7)
    # a second distributed run computes nothing; a damaged shard is rebuilt by both ranks
    assert [r["asked"] for r in _torchrun(script, str(tmp_path / "c"))] == [[], []]
    shard = tmp_path / "c" / "ka" / files[-1]
    shard.write_bytes(b"\0" * shard.stat().st_size)
    out = _torchrun(script, str(tmp_path / "c"))
    assert [r["asked"] for r in out] == [[[0, 26]], [[26, 53]]] and all(r["ok"] for r in out)
