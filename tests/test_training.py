import torch
import torch.nn.functional as F

from probekit import _training as training
from probekit._distributed import batches_of
from probekit._training import StopRequested, Trainer

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long()


def _trainer(checkpoint):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2))
    return model, Trainer({"m": model}, torch.optim.Adam(model.parameters(), 1e-2), epochs=3,
                          checkpoint=checkpoint)


def _batches(g):
    return batches_of(64, 16, g)


def test_stop_on_any_step_then_resume_gives_the_same_losses(tmp_path):
    model, trainer = _trainer(None)
    reference = trainer.fit(_batches, lambda i: F.cross_entropy(model(X[i]), Y[i]))
    for stop_at in (2, 4, 5):  # mid-epoch, the last step of epoch 1, the first step of epoch 2
        ck = tmp_path / f"stop{stop_at}.pt"
        model, trainer = _trainer(ck)
        steps = {"n": 0}

        def step(i, model=model, steps=steps, stop_at=stop_at):
            steps["n"] += 1
            if steps["n"] == stop_at:
                training.request_stop()
            return F.cross_entropy(model(X[i]), Y[i])

        try:
            trainer.fit(_batches, step)
            raise AssertionError("the trainer did not stop")
        except StopRequested:
            pass
        finally:
            training.clear_stop()
        model, trainer = _trainer(ck)
        assert trainer.fit(_batches, lambda i, model=model: F.cross_entropy(model(X[i]), Y[i])) == reference, stop_at
