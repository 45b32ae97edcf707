"""The compiled step replayed from CUDA graphs: the same training as the eager compiled step
(schedules, minibatch KL weights, a smaller last batch, the local reparameterisation, the deep
weight prior), resume, the NaN report, and the refusals (on CPU too)."""

from functools import partial

import pyro
import pytest
import torch
from test_compiled import KW, X, Y, dwp_convnet, images, params, regression

from pyro_dwp.infer import (
    JointAdam,
    JointSGD,
    LocalReparameterizationMessenger,
    SVITrainer,
    fit,
)
from pyro_dwp.infer.compiled import compile_svi
from pyro_dwp.infer.graphs import WARMUP_STEPS, GraphedSVI, graphable_reason

ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")


def _decay(epoch: int) -> float:
    return 1.0 / (1 + epoch)


def scheduled() -> JointAdam:
    """Adam whose rate changes every epoch: a replay must read the rate of the moment."""
    return JointAdam(0.01, lr_lambda=_decay)


def scheduled_sgd() -> JointSGD:
    """SGD with momentum whose rate changes every epoch (the -ELBO sums over 30 examples)."""
    return JointSGD(0.01 / 30, momentum=0.9, lr_lambda=_decay)


def train(build, x, y, cuda_graphs, epochs, handlers=(), optimizer=scheduled, **kw):
    pyro.clear_param_store()
    model, guide = build()
    optim = optimizer()
    options = {**KW, "lr": 0.01, **kw, "optim": optim, "handlers": list(handlers)}
    trainer = SVITrainer(
        model, guide, x, y, engine="compiled", device="cuda", cuda_graphs=cuda_graphs,
        callback=lambda record: optim.step(), **options,
    )  # fmt: skip
    history = trainer.train(epochs)
    return trainer, params(), history


def assert_close_runs(a, b):
    (_, pa, ha), (_, pb, hb) = a, b
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-6, msg=k)
    for ra, rb in zip(ha, hb, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)


@ON_CUDA
@pytest.mark.parametrize("local_reparam", [False, True], ids=["weights", "local_reparam"])
def test_replayed_training_equals_the_eager_compiled_training(local_reparam):
    # 30 examples in batches of 8: two batch shapes (8 and 6), Blundell KL weights per batch
    handlers = [LocalReparameterizationMessenger()] if local_reparam else []
    eager = train(regression, X, Y, False, 5, handlers)
    replayed = train(regression, X, Y, True, 5, handlers)
    assert eager[0].cuda_graphs == 0
    assert replayed[0].cuda_graphs == 2
    assert_close_runs(eager, replayed)


@ON_CUDA
def test_replayed_sgd_training_equals_the_eager_one():
    """The fused SGD update (momentum buffers, a scheduled rate) replays as it runs eagerly."""
    eager = train(regression, X, Y, False, 5, optimizer=scheduled_sgd)
    replayed = train(regression, X, Y, True, 5, optimizer=scheduled_sgd)
    assert replayed[0].cuda_graphs == 2
    assert_close_runs(eager, replayed)


@ON_CUDA
@pytest.mark.parametrize("trainable", [True, False], ids=["trainable", "frozen"])
def test_replayed_dwp_convnet_equals_the_eager_one(trainable):
    x, y = images()
    build = partial(dwp_convnet, trainable)
    lrt = [LocalReparameterizationMessenger()]
    eager = train(build, x, y, False, 4, lrt, batch_size=5, kl_scheme="uniform")
    replayed = train(build, x, y, True, 4, lrt, batch_size=5, kl_scheme="uniform")
    assert replayed[0].cuda_graphs == 1
    assert_close_runs(eager, replayed)


@ON_CUDA
def test_a_new_dataset_size_is_captured_again():
    """The N / B factor is part of a graph: a likelihood whose dataset_size changes between
    calls (a growing buffer) gets new graphs, not a stale factor."""
    runs = []
    for cuda_graphs in (False, True):
        trainer, _, _ = train(regression, X, Y, cuda_graphs, 3)
        trainer.model.likelihood.dataset_size = 300
        trainer.train(5)
        runs.append((trainer, params(), trainer.history))
    assert_close_runs(*runs)


@ON_CUDA
def test_replayed_resume_equals_an_uninterrupted_run(tmp_path):
    kw = {**KW, "engine": "compiled", "device": "cuda"}
    model, guide = regression()
    full = fit(model, guide, X, Y, epochs=5, **kw)
    expected = params()
    ck = tmp_path / "ck.pt"
    pyro.clear_param_store()
    model, guide = regression()
    fit(model, guide, X, Y, epochs=2, checkpoint=ck, **kw)
    pyro.clear_param_store()
    model, guide = regression()
    resumed = fit(model, guide, X, Y, epochs=5, checkpoint=ck, resume=True, **kw)
    for k, v in params().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6, msg=k)
    for a, b in zip(resumed, full, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


@ON_CUDA
def test_nan_loss_under_cuda_graphs_names_the_step():
    model, guide = regression()
    with pytest.raises(FloatingPointError, match=r"loss is (inf|nan) at epoch 1, step 2 of 4"):
        fit(model, guide, X, Y, epochs=2, **{**KW, "lr": 1e30}, engine="compiled", device="cuda")


@ON_CUDA
def test_cuda_graphs_start_after_the_warmup():
    trainer, _, _ = train(regression, X, Y, True, 1)  # 4 steps: Pyro's, then 3 eager compiled
    assert WARMUP_STEPS == 3 and trainer.cuda_graphs == 0
    trainer.train(2)
    assert trainer.cuda_graphs == 2


def test_graphs_are_refused_off_cuda_naming_why():
    model, guide = regression()
    compiled = compile_svi(model, guide, X[:8], Y[:8], optim=JointAdam(0.01))
    assert "CUDA graphs need a CUDA device" in graphable_reason(compiled)
    with pytest.raises(ValueError, match="cannot capture the compiled step: the parameters are"):
        GraphedSVI(compiled)
    trainer = SVITrainer(model, guide, X, Y, engine="compiled", **KW)
    trainer.train(1)
    assert trainer.running_engine == "compiled" and trainer.cuda_graphs == 0


def test_only_a_fused_joint_optimizer_is_made_capturable():
    with pytest.raises(RuntimeError, match="take one update first"):
        JointAdam(0.01).make_capturable(torch.device("cpu"))
    model, guide = regression()
    optim = JointAdam(0.01, fused=False)
    compiled = compile_svi(model, guide, X[:8], Y[:8], optim=optim)
    compiled.step(X[:8], Y[:8])
    with pytest.raises(RuntimeError, match=r"only the fused update \(fused=True\)"):
        optim.make_capturable(torch.device("cpu"))
    other = compile_svi(model, guide, X[:8], Y[:8], optim=pyro.optim.Adam({"lr": 0.01}))
    assert "the optimiser is PyroOptim, not a fused JointAdam or JointSGD" in graphable_reason(
        other
    )
    sgd = compile_svi(model, guide, X[:8], Y[:8], optim=JointSGD(0.01, momentum=0.9))
    assert "CUDA graphs need a CUDA device" in graphable_reason(sgd)  # the optimiser would do


def test_a_schedule_fills_a_tensor_rate_in_place():
    """What a replayed update reads: the schedule writes the rate into the same tensor."""
    model, guide = regression()
    optim = JointAdam(0.1, lr_lambda=_decay)
    compile_svi(model, guide, X[:8], Y[:8], optim=optim).step(X[:8], Y[:8])
    group = optim._optim.param_groups[0]
    rate = group["lr"] = torch.tensor(0.1)
    optim.step()
    assert group["lr"] is rate and rate.item() == pytest.approx(0.05)
