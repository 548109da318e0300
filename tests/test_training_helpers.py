"""Training helpers of the shared Trainer (gradient clipping, the best validation epoch) and what
`model.train` reports (train and test accuracy in metrics.json and the report)."""

import torch
import torch.nn.functional as F

import probekit
from probekit import Trainer, create_dataset
from probekit.testing import execute_run, mlp, prepare_run


def _digits():
    bundle = create_dataset("digits", seed=0)
    x = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))]).flatten(1)
    y = torch.tensor([int(bundle.train[i][1]) for i in range(len(bundle.train))])
    return x, y


def _batches(n, size):
    return lambda g: list(torch.randperm(n, generator=g).split(size))


def test_grad_clip_equals_torch_clip_grad_norm(tmp_path):
    x, y = _digits()
    torch.manual_seed(0)
    model = mlp(64, 32)
    reference = mlp(64, 32)
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = Trainer({"m": model}, opt, epochs=2, checkpoint=None, seed=1, tag="clip", grad_clip=0.05)
    trainer.fit(_batches(len(x), 64), lambda idx: F.cross_entropy(model(x[idx]), y[idx]))
    # the same loop by hand, with torch's own clipping
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    norms = []
    for epoch in range(2):
        g = torch.Generator().manual_seed(probekit.epoch_seed(1, epoch, "clip"))
        for idx in _batches(len(x), 64)(g):
            ref_opt.zero_grad()
            F.cross_entropy(reference(x[idx]), y[idx]).backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)))
            ref_opt.step()
    assert max(norms) > 0.05  # clipping did something
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_validate_keeps_the_best_epoch_and_restores_it_after_resume(tmp_path):
    x, y = _digits()
    val_x, val_y, fit_x, fit_y = x[:300], y[:300], x[300:], y[300:]

    def train(epochs, checkpoint):
        torch.manual_seed(0)
        model = mlp(64, 32)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)  # a high rate: the validation loss goes up again

        def validate():
            return float(F.cross_entropy(model(val_x), val_y))

        trainer = Trainer({"m": model}, opt, epochs=epochs, checkpoint=checkpoint, seed=0, tag="best",
                          validate=validate)
        trainer.fit(_batches(len(fit_x), 32), lambda idx: F.cross_entropy(model(fit_x[idx]), fit_y[idx]))
        return model, trainer

    model, trainer = train(8, tmp_path / "a.pt")
    assert len(trainer.val_losses) == 8
    best = min(range(8), key=lambda i: trainer.val_losses[i]) + 1
    assert trainer.best_epoch == best < 8, trainer.val_losses
    last = {k: v.clone() for k, v in model.state_dict().items()}
    assert trainer.restore_best() == best
    only_best, _ = train(best, None)  # the same training stopped at the best epoch
    for k, v in model.state_dict().items():
        assert torch.equal(v, only_best.state_dict()[k])
        assert not torch.equal(v, last[k]) or k.endswith("bias")
    # resumed from the checkpoint after the last epoch, the best weights are still known
    _, resumed = train(8, tmp_path / "a.pt")
    assert resumed.best_epoch == best and resumed.val_losses == trainer.val_losses


def test_model_train_reports_train_and_test_accuracy(tmp_path, digits_spec):
    spec = digits_spec(C=1.0)
    spec["model"]["train"].update(epochs=3, keep="best", val_fraction=0.2, grad_clip=5.0)
    run = prepare_run(probekit.load_spec(spec), tmp_path / "run")
    results = execute_run(run)
    scores = results["model_train"]
    assert scores["epochs"] == 3 and 1 <= scores["best_epoch"] <= 3
    # the reported test accuracy is the trained model's on the test set
    correct = 0
    with torch.no_grad():
        for images, labels in run.loader(run.data.test):
            out = run.model.logits(run.model.forward(run.model.preprocess(images)))
            correct += int((out.argmax(-1) == labels).sum())
    assert scores["test_accuracy"] == correct / len(run.data.test)
    assert 0.5 < scores["test_accuracy"] <= 1 and 0.5 < scores["train_accuracy"] <= 1
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"train accuracy {scores['train_accuracy']:.4f}, test accuracy {scores['test_accuracy']:.4f}" in log
    assert "validation loss" in log and "gradient norm clipped to 5" in log
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Model training" in report and f"test accuracy {scores['test_accuracy']:.4f}" in report
    # a second run loads the cached weights and reports the same numbers
    again = probekit.run(spec, tmp_path / "again")
    assert again["model_train"] == scores
