"""``batch_size: auto``: the CPU memory estimate, the CUDA out-of-memory search, the record for --resume."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import probekit
from probekit._batchsize import (
    find_batch_size,
    fit_memory_line,
    resolve_batch_size,
    saved_tensor_bytes,
    training_trial,
)
from probekit._errors import RunError
from probekit.testing import mlp, small_cnn

CPU = torch.device("cpu")


def _data(n=256, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _trial(model, x, y):
    def loss(b):
        idx = torch.arange(b)  # as the Trainer's steps: a gathered (copied) batch
        return F.cross_entropy(model(x[idx]), y[idx])

    return training_trial(loss, [model], CPU, precision="fp32")


def test_saved_bytes_of_an_mlp_are_counted_exactly():
    torch.manual_seed(0)
    model = mlp(in_features=64, hidden=32, depth=2)
    x, y = _data()
    params = list(model.parameters())
    # per example: the gathered input (64 floats), two ReLU outputs (32 floats each, also the next
    # Linear's saved input: one storage), log_softmax's output (10 floats), the int64 target
    per_example = 4 * (64 + 32 + 32 + 10) + 8
    line = fit_memory_line(_trial(model, x, y), (4, 16), exclude=params)
    assert line.per_example == pytest.approx(per_example)
    assert saved_tensor_bytes(_trial(model, x, y), 100, exclude=params) == pytest.approx(line(100), abs=16)


def test_fitted_bytes_per_example_predict_a_third_batch_size():
    torch.manual_seed(0)
    model = small_cnn(width=8)
    x, y = _data()
    trial = _trial(model, x, y)
    params = list(model.parameters())
    line = fit_memory_line(trial, (4, 32), exclude=params)
    measured = saved_tensor_bytes(trial, 200, exclude=params)
    assert line.per_example > 8 * 8 * 8 * 4  # at least the first conv's output
    assert abs(line(200) - measured) / measured < 0.03
    # the parameters' storages are left out when asked (they are in memory already)
    assert saved_tensor_bytes(trial, 200) > measured


def test_a_smaller_memory_budget_gives_a_proportionally_smaller_batch():
    torch.manual_seed(0)
    model = small_cnn(width=8)
    x, y = _data()
    trial = _trial(model, x, y)
    params = list(model.parameters())
    line = fit_memory_line(trial, (1, 32), exclude=params)
    fixed = 3 * sum(p.numel() * p.element_size() for p in params)
    available = int((120 * line.per_example + line.constant + fixed) / 0.8) + 1  # 120 examples fit 80%
    logs = []
    kw = {"maximum": 256, "device": CPU, "fixed_bytes": fixed, "exclude": params, "available": available}
    assert find_batch_size(trial, **kw, log=logs.append) == 120
    assert logs and "batch_size auto: 120" in logs[0] and "80%" in logs[0] and "available" in logs[0]
    half = find_batch_size(trial, **kw, memory_fraction=0.4)
    assert half == int((0.4 * available - fixed - line.constant) // line.per_example)
    assert 55 <= half <= 60
    # two processes sharing the memory: about half each
    assert find_batch_size(trial, **kw, processes=2) == pytest.approx(half, abs=1)


def test_the_batch_is_capped_at_maximum():
    torch.manual_seed(0)
    model = mlp(in_features=64, hidden=16)
    x, y = _data(n=40)
    logs = []
    assert find_batch_size(_trial(model, x, y), maximum=40, device=CPU, available=2**40, log=logs.append) == 40
    assert "limited by the training-set size 40" in logs[0]
    assert find_batch_size(_trial(model, x, y), maximum=1, device=CPU) == 1


def test_cuda_search_doubles_then_bisects_to_the_exact_threshold():
    tried = []

    def trial(b):
        tried.append(b)
        if b > 37:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (tried {b})")

    logs = []
    assert find_batch_size(trial, maximum=10_000, device=torch.device("cuda"), log=logs.append) == 37
    assert tried[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert sorted(tried[7:]) == [36, 37, 38, 40, 48]  # bisection between 32 (fits) and 64 (does not)
    assert "doubling, then bisection" in logs[0]
    tried.clear()
    assert find_batch_size(trial, maximum=20, device=torch.device("cuda"), start=4) == 20
    assert tried == [4, 8, 16, 20]
    tried.clear()
    assert find_batch_size(trial, maximum=100, device=torch.device("cuda"), start=50) == 37  # start too big


def test_cuda_search_fails_cleanly_when_nothing_fits_and_passes_other_errors_on():
    def oom(b):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(RunError, match="even one example"):
        find_batch_size(oom, maximum=64, device=torch.device("cuda"))

    def broken(b):
        raise ValueError("a bug in the step")

    with pytest.raises(ValueError, match="a bug"):
        find_batch_size(broken, maximum=64, device=torch.device("cuda"))


def test_trial_leaves_weights_buffers_gradients_and_random_state_as_they_were():
    torch.manual_seed(0)
    model = small_cnn(width=8).train()  # batch norm updates its running statistics in train mode
    x, y = _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    def loss(b):
        torch.rand(3)  # randomness in the step (dropout): must not shift the training's random stream
        return F.cross_entropy(model(x[:b]), y[:b])

    training_trial(loss, [model], CPU)(16)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def _fake_run(tmp_path):
    logs = []
    run = SimpleNamespace(checkpoint_dir=tmp_path / "checkpoints", device=CPU, log=logs.append)
    return run, logs


def test_resolve_stores_the_choice_and_reuses_it_on_resume(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = mlp(in_features=64, hidden=16)
    x, y = _data()
    run, logs = _fake_run(tmp_path)

    def loss(b):
        return F.cross_entropy(model(x[torch.arange(b)]), y[torch.arange(b)])

    assert resolve_batch_size(run, "linear 5", 32, loss, modules=[model], maximum=256) == 32  # a number: as is
    assert not logs and not run.checkpoint_dir.exists()
    monkeypatch.setattr("probekit._batchsize.available_memory", lambda: 2**40)
    assert resolve_batch_size(run, "linear 5", "auto", loss, modules=[model], maximum=200) == 200
    files = list(run.checkpoint_dir.iterdir())
    assert len(files) == 1 and files[0].name.startswith("batch-size-linear_5-")
    record = json.loads(files[0].read_text())
    assert record["batch_size"] == 200 and record["tag"] == "linear 5" and record["world_size"] == 1
    assert "batch_size auto (linear 5): 200 (limited by the training-set size 200" in logs[-1]

    # resumed where memory is now scarce: the stored size is reused, nothing is tried
    monkeypatch.setattr("probekit._batchsize.available_memory", lambda: 1)

    def must_not_run(b):
        raise AssertionError("searched again")

    assert resolve_batch_size(run, "linear 5", "auto", must_not_run, modules=[model], maximum=200) == 200
    assert "200, as chosen before and kept in checkpoints/batch-size-linear_5-" in logs[-1]
    # another tag searches on its own (and, with no memory to spare, settles on 1)
    assert resolve_batch_size(run, "linear 9", "auto", loss, modules=[model], maximum=200) == 1
    assert len(list(run.checkpoint_dir.iterdir())) == 2


def test_run_with_batch_size_auto_records_and_reuses_the_sizes(tmp_path, digits_spec, monkeypatch):
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))  # this run's model record alone
    spec = digits_spec(solver="sgd", epochs=2, batch_size="auto")
    spec["model"]["train"].update(epochs=1, batch_size="auto")
    spec["data"]["limit"] = 300
    # 4 MiB "available": the CNN's activations limit model.train; the linear probes fit the whole set
    monkeypatch.setattr("probekit._batchsize.available_memory", lambda: 4 * 2**20)
    results = probekit.run(spec, tmp_path / "r")
    records = {json.loads(p.read_text())["tag"]: json.loads(p.read_text())
               for p in (tmp_path / "r" / "checkpoints").glob("batch-size-*.json")}
    assert set(records) == {"model.train", "linear 5", "linear 9"}
    assert 1 < records["model.train"]["batch_size"] < 300
    assert records["linear 5"]["batch_size"] == records["linear 9"]["batch_size"] == 300
    log = (tmp_path / "r" / "log.txt").read_text()
    assert f"batch_size auto (model.train): {records['model.train']['batch_size']} (fits 80% of 4 MiB" in log
    assert "batch_size auto (linear 9): 300 (limited by the training-set size 300" in log
    # the cached trained model's record holds the size it was trained with
    (info,) = (Path(os.environ["PROBEKIT_CACHE"]) / "models").glob("*.json")
    assert json.loads(info.read_text())["train"]["batch_size"] == records["model.train"]["batch_size"]
    assert results["accuracy"]["9"] > 0.2

    monkeypatch.setattr("probekit._batchsize.available_memory", lambda: 1)  # less memory on resume: reused
    again = probekit.run(spec, tmp_path / "r", resume=True)
    assert again == results
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "batch_size auto (linear 5): 300, as chosen before and kept in" in log
    assert f"(trained with batch_size auto: {records['model.train']['batch_size']})" in log


def test_distributed_rank0_searches_one_process_share_and_every_rank_gets_its_answer(tmp_path, monkeypatch):
    import torch.distributed as dist

    from probekit import _distributed as distributed

    torch.manual_seed(0)
    model = mlp(in_features=64, hidden=16)
    x, y = _data()

    def loss(b):
        return F.cross_entropy(model(x[torch.arange(b)]), y[torch.arange(b)])

    sent = []
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)  # a process group of 2, faked
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "is_main", lambda: True)
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src: sent.append((list(box), src)))
    monkeypatch.setattr("probekit._batchsize.available_memory", lambda: 2**40)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    run, logs = _fake_run(tmp_path)
    # 101 examples: 51 per process at most; the global batch is capped at 101
    assert resolve_batch_size(run, "t", "auto", loss, modules=[model], maximum=101) == 101
    (record,) = [json.loads(p.read_text()) for p in run.checkpoint_dir.iterdir()]
    assert (record["per_process"], record["world_size"], record["batch_size"]) == (51, 2, 101)
    assert sent == [([101], 0)]
    assert "51 per process x 2 processes" in logs[-1]

    # a rank other than 0: no search, rank 0's answer
    def from_rank0(box, src):
        box[0] = 64

    monkeypatch.setattr(distributed, "is_main", lambda: False)
    monkeypatch.setattr(dist, "broadcast_object_list", from_rank0)

    def must_not_run(b):
        raise AssertionError("only rank 0 searches")

    assert resolve_batch_size(run, "u", "auto", must_not_run, modules=[model], maximum=101) == 64
