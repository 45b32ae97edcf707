"""The training engine: a step loop that keeps its state between calls, one checkpoint object."""

import pyro
import pytest
import torch
from test_fit import KW, X, Y, make, params
from torch import nn

from pyro_dwp.infer import Checkpoint, CheckpointError, SVITrainer, fit, load_checkpoint
from pyro_dwp.infer.steps import GradientSteps


def test_trainer_in_stages_equals_one_fit_call(tmp_path):
    """train(2) then train(5) on one SVITrainer is fit(epochs=5): Adam's moments, the shuffling
    generator and the RNG stream carry over between calls."""
    model, guide = make()
    full = fit(model, guide, X, Y, epochs=5, **KW)
    expected = params()

    pyro.clear_param_store()
    model, guide = make()
    trainer = SVITrainer(model, guide, X, Y, checkpoint=tmp_path / "ck.pt", **KW)
    assert len(trainer.train(2)) == 2 and trainer.epoch == 2
    assert load_checkpoint(tmp_path / "ck.pt")["epoch"] == 2  # saved at the end of each call
    staged = trainer.train(5)
    assert [r["loss"] for r in staged] == [r["loss"] for r in full]
    got = params()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert trainer.train(5) == staged  # already there: nothing to do


def test_trainer_resume_comes_first(tmp_path):
    model, guide = make()
    trainer = SVITrainer(model, guide, X, Y, checkpoint=tmp_path / "ck.pt", **KW)
    assert trainer.resume() is False  # no file yet: starts afresh
    trainer.train(1)
    with pytest.raises(RuntimeError, match="before the first train"):
        trainer.resume()


def test_checkpoint_round_trip_restores_every_rng(tmp_path):
    shuffle = torch.Generator().manual_seed(5)
    ck = Checkpoint(tmp_path / "ck.pt", generators={"shuffle": shuffle})
    pyro.set_rng_seed(1)
    ck.save(3, {"seed": 1, "n": 10}, [{"epoch": 3}], optim={"lr": 0.1})
    expected = (torch.rand(3), torch.randperm(10, generator=shuffle))
    pyro.set_rng_seed(99)
    shuffle.manual_seed(99)
    state = ck.load({"seed": 1, "n": 10})
    assert state["epoch"] == 3 and state["optim"] == {"lr": 0.1}
    ck.restore_rng(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert torch.equal(torch.randperm(10, generator=shuffle), expected[1])
    with pytest.raises(CheckpointError, match=r"other settings \(seed: 1 -> 2\)"):
        ck.load({"seed": 2, "n": 10})


@pytest.mark.parametrize(("optimizer", "momentum"), [("adam", 0.0), ("sgd", 0.0), ("sgd", 0.9)])
@pytest.mark.parametrize("decay_steps", [None, 4])
def test_gradient_steps_are_torch_optimizers_with_the_linear_schedule(
    decay_steps, optimizer, momentum
):
    torch.manual_seed(0)
    ours, theirs = nn.Linear(3, 1), nn.Linear(3, 1)
    theirs.load_state_dict(ours.state_dict())
    steps = GradientSteps(
        ours.parameters(), 0.1, decay_steps=decay_steps, optimizer=optimizer, momentum=momentum
    )
    if optimizer == "adam":
        optim = torch.optim.Adam(theirs.parameters(), lr=0.1)
    else:
        optim = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=momentum)
    rate = 1.0 if decay_steps is None else None
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda t: rate if rate is not None else 1 - t / decay_steps
    )
    x = torch.randn(8, 3)
    for _ in range(4):
        steps.step(ours(x).square().mean())
        optim.zero_grad()
        theirs(x).square().mean().backward()
        optim.step()
        schedule.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("optimizer", "momentum", "message"),
    [
        ("adam", 0.9, "momentum is SGD's"),
        ("sgd", 1.0, r"momentum must be in \[0, 1\)"),
        ("rmsprop", 0.0, "optimizer must be 'adam' or 'sgd'"),
    ],
)
def test_gradient_steps_refuse_bad_settings(optimizer, momentum, message):
    with pytest.raises(ValueError, match=message):
        GradientSteps(nn.Linear(2, 1).parameters(), 0.1, optimizer=optimizer, momentum=momentum)
