"""The lockstep Mushroom-bandit engine: each member optimises its reference agent's loss with its
Adam update, members are independent, the bookkeeping is the bandit's, learning beats chance,
resume is exact, bad options are refused, and (on CUDA) the captured step equals the eager one."""

from __future__ import annotations

import io

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_dwp.experiments.bandit_lockstep import LockstepBandit, agent_epsilon
from pyro_dwp.experiments.bandits import (
    GreedyAgent,
    MushroomBandit,
    ThompsonBBBAgent,
    agent_seed,
    network_inputs,
)
from pyro_dwp.infer import KLScaleMessenger

SMALL = {"hidden": (8,), "buffer_size": 16, "batch_size": 4, "num_batches": 2, "lr": 1e-2}


def synthetic_data() -> tuple[torch.Tensor, torch.Tensor]:
    """40 mushrooms of 6 distinct one-hot contexts, each edible or not at random."""
    g = torch.Generator().manual_seed(3)
    contexts = torch.nn.functional.one_hot(torch.randint(6, (40,), generator=g), 6).float()
    return contexts, torch.rand(40, generator=g) < 0.5


def runner(agents=("bbb", "greedy"), seeds=(0, 1), **kwargs) -> LockstepBandit:
    contexts, edible = synthetic_data()
    return LockstepBandit(contexts, edible, agents=agents, seeds=seeds, **{**SMALL, **kwargs})


def draws(r: LockstepBandit, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch rows among the stored interactions and weight noise for one update."""
    g = torch.Generator().manual_seed(seed)
    size = max(1, min(r.steps, r.buffer_size))
    rows = torch.randint(size, (len(r.members), r.batch_size), generator=g)
    eps = torch.randn(r.num_bbb, r.num_particles, r.num_weights, generator=g)
    return rows, eps


VARIANT = {"pi": 0.25, "sigma1": 0.3, "sigma2": 0.01, "init_scale": 0.05, "noise": 2.0}
"""Settings of a ``bbb:v`` agent beside ``bbb`` (``overrides``), each unlike the default."""


@pytest.mark.parametrize(
    ("steps", "kl_size", "size", "agent_name", "kl_scheme", "update", "learn_noise"),
    [
        (3, "buffer", 3, "bbb", "uniform", 0, False),
        (20, "buffer", 16, "bbb", "uniform", 0, False),
        (20, "seen", 20, "bbb", "uniform", 0, False),
        (20, "buffer", 16, "bbb:v", "uniform", 0, False),
        (20, "buffer", 16, "bbb", "blundell", 0, False),
        (20, "buffer", 16, "bbb:v", "blundell", 1, False),
        (20, "buffer", 16, "bbb", "uniform", 0, True),
        (20, "buffer", 16, "bbb:v", "uniform", 0, True),
        (20, "seen", 20, "bbb:v", "uniform", 0, False),
        (3, "capacity", 16, "bbb", "uniform", 0, False),
        (3, "capacity", 16, "bbb:v", "uniform", 0, False),
    ],
    ids=[
        "buffer_below_batch", "buffer_full", "seen", "variant", "blundell_1st", "blundell_2nd",
        "learnt_noise", "learnt_noise_variant", "variant_seen", "capacity", "variant_capacity",
    ],
)  # fmt: skip
def test_bbb_loss_and_gradients_equal_pyros_trace_elbo(
    steps, kl_size, size, agent_name, kl_scheme, update, learn_noise, one_thread
):
    # the member (agent_name, seed 1) of a runner beside other members; its reference agent
    # starts from the same weights; the data term's scale max(N, B) / B is 1 (N = 3 < B = 4),
    # then 16 / 4 (N the buffer's 16 interactions), or 20 / 4 (N the 20 seen, kl_size="seen"),
    # or 16 / 4 after 3 steps (N the buffer's capacity, kl_size="capacity");
    # "bbb:v" has a prior, initial scale and noise of its own beside "bbb" (per-member tensors);
    # under kl_scheme="blundell" the KL term of update k of K = 2 is Pyro's scaled by
    # K * pi_k = 2 * 2^-k / (1 - 2^-2): 4/3 for the first, 2/3 for the second; learn_noise: the
    # noise a point estimate, Pyro's "noise_scale" (exp of the stored value), its gradient too;
    # "bbb:v" takes its kl_size as a setting of its own (beside "bbb" at "buffer"; "seen": a
    # per-member data-term scale)
    variant = VARIANT | ({"kl_size": kl_size} if agent_name == "bbb:v" else {})
    r = runner(
        agents=("greedy", "bbb", "bbb:v"), seeds=(0, 1), kl_scheme=kl_scheme,
        kl_size="buffer" if agent_name == "bbb:v" else kl_size, learn_noise=learn_noise,
        overrides={"bbb:v": variant},
    )  # fmt: skip
    for _ in range(steps):
        r.step()
    member = r.members.index((agent_name, 1))
    pyro.clear_param_store()
    own = dict(variant if agent_name == "bbb:v" else {})
    if learn_noise:
        own |= {"noise": None, "init_noise": own.get("noise", 1.0)}
    agent = ThompsonBBBAgent(6, seed=agent_seed(agent_name, 1), num_particles=2, **SMALL, **own)
    agent.likelihood.dataset_size = size
    with pyro.poutine.block():  # a learnt noise enters the param store with the model's run
        agent.likelihood.noise_scale(torch.zeros(()))
    store = dict(pyro.get_param_store().named_parameters())
    fresh = runner(
        agents=("greedy", "bbb", "bbb:v"), seeds=(0, 1), learn_noise=learn_noise,
        overrides={"bbb:v": VARIANT},
    )  # fmt: skip
    assert ("log_noise" in fresh.named_parameters(member)) == learn_noise
    for name, value in fresh.named_parameters(member).items():
        if name.startswith("loc."):
            assert torch.equal(value, agent.guide.loc(name[4:]))
        else:
            torch.testing.assert_close(value, store[_store_name(name)], rtol=0, atol=0)

    # Pyro's loss on the runner's current parameters, its noise read off the guide's draws
    with torch.no_grad():
        for name, value in r.named_parameters(member).items():
            store[_store_name(name)].copy_(value)
    rows, _ = draws(r)
    x = r.state_dict()["buffer_x"][member, rows[member]]
    y = r.state_dict()["buffer_y"][member, rows[member], None]
    traced = pyro.poutine.trace(agent.guide)
    elbo = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    kl_factor = {"uniform": 1.0, "blundell": (4 / 3, 2 / 3)[update]}[kl_scheme]
    kl = KLScaleMessenger(kl_factor)
    expected = elbo.differentiable_loss(kl(agent.model), kl(traced), x, y)
    noise = [
        node["fn"].base_dist._draw[1].reshape(2, -1)  # (P, 1, *shape) -> (P, size)
        for node in traced.trace.nodes.values()
        if node["type"] == "sample"
    ]
    eps = torch.zeros(r.num_bbb, r.num_particles, r.num_weights)
    eps[member] = torch.cat(noise, dim=1)
    params = list(store.values())
    expected_grads = dict(zip(store, torch.autograd.grad(expected, params), strict=True))

    loss = r.losses(rows, eps, update=update)[member]
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0.0)
    (grad,) = torch.autograd.grad(loss, r.params)
    for name, g in r.named_parameters(member, grad).items():
        e = expected_grads[_store_name(name)]
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * float(e.abs().max()))


def _store_name(name: str) -> str:
    """The name in Pyro's param store of a lockstep member's parameter ``name``."""
    if name == "log_noise":  # the unconstrained value of the positive "noise_scale"
        return "noise_scale"
    kind, site = name.split(".", 1)
    return f"BBBNormal.{'locs' if kind == 'loc' else 'scales'}.{site}"


def test_a_step_gives_blundells_kl_factors_to_its_updates_in_order(monkeypatch, one_thread):
    # K = 3 updates a step: K * 2^-k / (1 - 2^-K) = 12/7, 6/7, 3/7, as the reference agent's
    r = runner(kl_scheme="blundell", num_batches=3)
    seen: list[float] = []
    update = r._update
    monkeypatch.setattr(r, "_update", lambda *a: seen.append(float(a[-1])) or update(*a))
    r.step()
    r.step()
    assert seen == pytest.approx([12 / 7, 6 / 7, 3 / 7] * 2, rel=1e-6)
    with pytest.raises(ValueError, match="update must be in \\[0, 3\\), got 3"):
        r.losses(*draws(r), update=3)
    with pytest.raises(ValueError, match="unknown KL scheme 'graves'"):
        runner(kl_scheme="graves")


@pytest.mark.parametrize("lr", [None, 0.05], ids=["shared_lr", "own_lr"])
@pytest.mark.parametrize("agents", [("bbb", "eps0.05"), ("eps0.05",)], ids=["beside_bbb", "alone"])
def test_a_greedy_update_equals_the_greedy_agents_adam_step(lr, agents, one_thread):
    # with its own learning rate (overrides), the members' rates differ: a per-element rate;
    # alone, the runner has no bbb member (its parts of the step are empty)
    overrides = {} if lr is None else {"eps0.05": {"lr": lr}}
    r = runner(agents=agents, seeds=(0, 3), overrides=overrides)
    member = r.members.index(("eps0.05", 3))
    settings = SMALL if lr is None else {**SMALL, "lr": lr}
    agent = GreedyAgent(6, epsilon=0.05, seed=agent_seed("eps0.05", 3), **settings)
    expected = dict(agent.net.named_parameters())
    for name, value in r.named_parameters(member).items():
        assert torch.equal(value, expected[name])  # the same initial weights
    state = r.state_dict()  # a buffer of 10 interactions, parameters and Adam untouched
    g = torch.Generator().manual_seed(1)
    state["buffer_x"].uniform_(generator=g)
    state["buffer_y"].normal_(generator=g)
    state["interactions"].fill_(10)
    r.load_state_dict(state)
    for k in range(3):  # three steps: Adam's moments and bias corrections
        rows = torch.randint(10, (len(r.members), r.batch_size), generator=g)
        _, eps = draws(r, seed=k)
        r.update(rows, eps)
        agent.train_step(
            state["buffer_x"][member, rows[member]], state["buffer_y"][member, rows[member], None]
        )
        for name, value in r.named_parameters(member).items():
            torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7)


def assert_adams_first_update(r: LockstepBandit, rate, atol: float = 1e-9) -> None:
    """From ``r``'s state with Adam's moments reset, one update moves each parameter by Adam's
    first step in closed form, ``-rate * g / (|g| + 1e-8)``, with ``rate(agent, name)`` the
    rate of the member's parameter ``name`` (``named_parameters``' names)."""
    state = r.state_dict()
    for key in ("adam_m", "adam_v", "adam_steps"):
        state[key].zero_()
    r.load_state_dict(state)
    rows, eps = draws(r)
    (grad,) = torch.autograd.grad(r.losses(rows, eps).sum(), r.params)
    before = r.params.detach().clone()
    r.update(rows, eps)
    for member, (agent, _) in enumerate(r.members):
        moved = r.named_parameters(member, r.params.detach() - before)
        g = r.named_parameters(member, grad)
        for name, delta in moved.items():
            expected = -rate(agent, name) * g[name] / (g[name].abs() + 1e-8)
            torch.testing.assert_close(delta, expected, rtol=1e-4, atol=atol)


def test_the_scales_learn_at_their_own_rate(one_thread):
    # a bbb member's rho at scale_lr_factor * lr (0.5 for bbb, 0.1 for bbb:v), its mu and the
    # greedy member at lr
    r = runner(
        agents=("bbb", "bbb:v", "greedy"), seeds=(0,), scale_lr_factor=0.5,
        overrides={"bbb:v": {"scale_lr_factor": 0.1}},
    )  # fmt: skip
    for _ in range(5):
        r.step()
    rates = {("bbb", "loc"): 1e-2, ("bbb", "rho"): 5e-3, ("bbb:v", "loc"): 1e-2}
    rates |= {("bbb:v", "rho"): 1e-3, ("greedy", "weight"): 1e-2}
    assert_adams_first_update(
        r, lambda agent, name: rates[agent, name.split(".")[0] if agent != "greedy" else "weight"]
    )
    with pytest.raises(ValueError, match="scale_lr_factor must be > 0, got 0.0"):
        runner(scale_lr_factor=0.0)


@pytest.mark.parametrize(("steps", "rate"), [(0, 1e-2), (2, 1e-3), (4, 1e-4), (6, 1e-4)])
def test_the_rate_decays_geometrically_over_the_decay_steps(steps, rate, one_thread):
    # lr 1e-2 to a final factor of 0.01 over 4 steps: after t interactions the update is the one
    # a constant rate of 1e-2 * 0.01 ** min(t / 4, 1) takes from the same state (Adam's moments
    # included), for the bbb and the greedy members alike
    decayed = runner(lr_final_factor=0.01, lr_decay_steps=4)
    for _ in range(steps):
        decayed.step()
    state = decayed.state_dict()
    constant = runner(lr=rate)
    constant.load_state_dict(state)
    rows, eps = draws(decayed)
    for r in (decayed, constant):
        r.update(rows, eps)
    assert not torch.equal(decayed.params, torch.as_tensor(state["params"]))
    torch.testing.assert_close(decayed.params, constant.params, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="lr_final_factor must be > 0, got 0.0"):
        runner(lr_final_factor=0.0)
    with pytest.raises(ValueError, match="lr_decay_steps must be >= 1, got 0"):
        runner(lr_decay_steps=0)


@pytest.mark.parametrize("steps", [0, 2, 3, 6])
def test_each_agent_decays_its_rate_by_its_own_factor_and_length(steps, one_thread):
    # lr 1e-2 decayed to 0.01 x (bbb, over 4 steps; bbb:s over 2; eps0.5 over 6), 1 x (bbb:c:
    # constant) and 0.1 x (greedy, over 4): after t interactions every parameter of a member
    # moves at 1e-2 * factor ** min(t / length, 1)
    overrides = {"bbb:c": {"lr_final_factor": 1.0}, "greedy": {"lr_final_factor": 0.1}}
    overrides |= {"bbb:s": {"lr_decay_steps": 2}, "eps0.5": {"lr_decay_steps": 6}}
    r = runner(
        agents=("bbb", "bbb:c", "bbb:s", "greedy", "eps0.5"), seeds=(0,), lr_final_factor=0.01,
        lr_decay_steps=4, overrides=overrides,
    )  # fmt: skip
    for _ in range(steps):
        r.step()
    factors = {"bbb": 0.01, "bbb:c": 1.0, "bbb:s": 0.01, "greedy": 0.1, "eps0.5": 0.01}
    lengths = {"bbb": 4, "bbb:c": 4, "bbb:s": 2, "greedy": 4, "eps0.5": 6}
    # atol: float32's spacing at rho (about -4.6) is 4.8e-7; the rates differ by >= 9e-5
    assert_adams_first_update(
        r, lambda agent, _: 1e-2 * factors[agent] ** min(steps / lengths[agent], 1.0), atol=1e-6
    )


def test_members_are_independent(one_thread):
    r = runner(agents=("bbb", "greedy", "eps0.5"), seeds=(0, 1))
    for _ in range(5):
        r.step()
    start = r.state_dict()
    rows, eps = draws(r)
    r.update(rows, eps)
    before = {m: {k: v.clone() for k, v in r.named_parameters(m).items()} for m in range(6)}
    for changed in (r.members.index(("bbb", 1)), r.members.index(("eps0.5", 0))):
        r.load_state_dict(start)
        with torch.no_grad():
            for value in r.named_parameters(changed).values():
                value.add_(0.1)
        other_rows, other_eps = rows.clone(), eps.clone()
        other_rows[changed] = (other_rows[changed] + 1) % 5
        if changed < r.num_bbb:
            other_eps[changed] = -other_eps[changed]
        r.update(other_rows, other_eps)
        for m in range(len(r.members)):
            same = all(torch.equal(v, before[m][k]) for k, v in r.named_parameters(m).items())
            assert same == (m != changed), (r.members[m], r.members[changed])


def test_rewards_and_regret_are_the_bandits(one_thread):
    # every member's action, reward and cumulative regret against MushroomBandit on its seed
    contexts, edible = synthetic_data()
    r = runner(agents=("bbb", "greedy", "eps0.5"), seeds=(0, 2), stream_chunk=7)
    envs = {s: MushroomBandit(contexts, edible, seed=s) for s in (0, 2)}
    regret = torch.zeros(len(r.members), dtype=torch.float64)
    for _ in range(30):
        r.step()
        for env in envs.values():
            env.observe()
        assert r.mushrooms.tolist() == [envs[0].index, envs[2].index]
        stored = r.state_dict()["buffer_x"][:, (r.steps - 1) % r.buffer_size]
        shown = torch.stack([contexts[envs[seed].index] for _, seed in r.members])
        assert torch.equal(stored, network_inputs(shown, r.actions))
        for m, (_, seed) in enumerate(r.members):
            env = envs[seed]
            received = env.reward(int(r.actions[m]))
            assert float(r.rewards[m]) == received
            regret[m] += env.oracle_reward() - received
    assert torch.equal(r.regret(), regret)
    assert r.steps == 30


def test_trained_members_beat_a_uniformly_random_agent(one_thread):
    # 6 kinds of mushroom, the first 3 edible: learnable from the context
    kinds = torch.arange(40) % 6
    contexts, edible = torch.nn.functional.one_hot(kinds, 6).float(), kinds < 3
    steps, seeds = 300, (0, 1, 2, 3)
    random_regret = {}
    for seed in seeds:  # a uniformly random agent on each seed's stream
        env, coins = MushroomBandit(contexts, edible, seed=seed), torch.Generator()
        coins.manual_seed(seed)
        random_regret[seed] = 0.0
        for _ in range(steps):
            env.observe()
            action = int(torch.randint(2, (), generator=coins))
            random_regret[seed] += env.oracle_reward() - env.reward(action)
    options = {"hidden": (16,), "buffer_size": 256, "batch_size": 32, "num_batches": 4}
    r = LockstepBandit(contexts, edible, agents=["bbb", "eps0.1"], seeds=seeds, lr=3e-2, **options)
    for _ in range(steps):
        r.step()
    regret = r.regret()
    assert min(random_regret.values()) > 1000  # about 5 per step
    for (agent, seed), total in zip(r.members, regret.tolist(), strict=True):
        assert total < random_regret[seed], (agent, seed, total, random_regret[seed])
    # on average a third of chance's regret (random: about 1,450; the members: 190 to 1,145)
    assert float(regret.mean()) < 0.5 * sum(random_regret.values()) / len(seeds)


def test_resume_equals_an_uninterrupted_run(one_thread):
    whole = runner(agents=("bbb", "eps0.05"), seeds=(0, 1), stream_chunk=4)
    for _ in range(22):
        whole.step()
    first = runner(agents=("bbb", "eps0.05"), seeds=(0, 1), stream_chunk=4)
    for _ in range(9):  # stops inside a chunk of the stream
        first.step()
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)
    saved.seek(0)
    second = runner(agents=("bbb", "eps0.05"), seeds=(0, 1), stream_chunk=4)
    second.load_state_dict(torch.load(saved, weights_only=False))
    for _ in range(13):
        second.step()
    assert equal(whole.state_dict(), second.state_dict())


def test_a_state_from_another_device_kind_is_refused_before_anything_changes(one_thread):
    r = runner(agents=("bbb",), seeds=(0,))
    r.step()
    state = r.state_dict()
    assert state["device_type"] == "cpu"
    before = r.params.clone()
    foreign = {**state, "device_type": "cuda", "params": state["params"] + 1}
    with pytest.raises(ValueError, match="state written on cuda, but this runner is on cpu"):
        r.load_state_dict(foreign)
    assert torch.equal(r.params, before)


def equal(a: object, b: object) -> bool:
    """Whether two states are equal, tensors exactly."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_agent_names():
    assert [agent_epsilon(n) for n in ("bbb", "greedy", "eps0.05", "eps1")] == [None, 0, 0.05, 1]
    for bad in ("eps0", "eps2", "epsx", "thompson"):
        with pytest.raises(ValueError, match=f"agents: unknown agent '{bad}'"):
            agent_epsilon(bad)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"agents": ()}, "agents: name at least one agent"),
        ({"agents": ("bbb", "bbb")}, "agents: an agent is named twice"),
        ({"agents": ("ucb",)}, "agents: unknown agent 'ucb'"),
        ({"seeds": ()}, "seeds: give at least one seed"),
        ({"seeds": (1, 1)}, "seeds: a seed is given twice"),
        ({"hidden": (8, 0)}, "hidden: layer sizes must be >= 1"),
        ({"buffer_size": 0}, "buffer_size must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"num_batches": 0}, "num_batches must be >= 1"),
        ({"num_particles": 0}, "num_particles must be >= 1"),
        ({"stream_chunk": 0}, "stream_chunk must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"noise": -1.0}, "noise must be > 0"),
        ({"init_scale": 0.0}, "init_scale must be > 0"),
        ({"pi": 1.0}, r"pi must be in \(0, 1\)"),
        ({"kl_size": "all"}, r"kl_size must be one of \['buffer', 'seen', 'capacity'\], got 'all'"),
        ({"agents": ("bbb:",)}, "agents: unknown agent 'bbb:'"),
        ({"overrides": {"eps0.1": {"lr": 1.0}}}, r"overrides: agents \['eps0.1'\] are not"),
        ({"overrides": {"greedy": {"pi": 0.3}}}, r"agent 'greedy' has no setting \['pi'\]"),
        ({"overrides": {"bbb": {"scale": 0.3}}}, r"agent 'bbb' has no setting \['scale'\]"),
        ({"overrides": {"bbb": {"sigma1": -1}}}, "overrides of agent 'bbb': sigma1 must be > 0"),
        ({"overrides": {"greedy": {"lr": 0}}}, "overrides of agent 'greedy': lr must be > 0"),
        (
            {"overrides": {"greedy": {"lr_final_factor": 0}}},
            "overrides of agent 'greedy': lr_final_factor must be > 0",
        ),
        (
            {"overrides": {"bbb": {"lr_decay_steps": 0.5}}},
            "overrides of agent 'bbb': lr_decay_steps must be >= 1, got 0.5",
        ),
        ({"capture": True, "device": "cpu"}, "capture: a CUDA graph needs a CUDA device"),
    ],
)
def test_bad_options_are_refused_naming_them(options, message):
    with pytest.raises(ValueError, match=message):
        runner(**options)


def test_bad_inputs_are_refused():
    contexts, edible = synthetic_data()
    with pytest.raises(ValueError, match=r"contexts must be \(N, D\) and edible \(N,\)"):
        LockstepBandit(contexts, edible[:5], agents=["bbb"], seeds=[0])
    r = runner()
    rows, eps = draws(r)
    with pytest.raises(ValueError, match=r"rows must be \(4, B\)"):
        r.losses(rows[:1], eps)
    with pytest.raises(ValueError, match=r"eps must be \(2, 2, 81\)"):
        r.update(rows, eps[:, :1])
    with pytest.raises(ValueError, match=r"member must be in \[0, 4\)"):
        r.named_parameters(4)
    with pytest.raises(ValueError, match="state of members"):
        r.load_state_dict(runner(seeds=(0, 2)).state_dict())
    with pytest.raises(ValueError, match="another network"):
        r.load_state_dict(runner(hidden=(9,)).state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("variant", [False, True], ids=["shared_settings", "variant"])
def test_the_captured_step_equals_the_eager_step(variant):
    # with a variant, the prior, noise, learning rates (its scales' at their own rate) and the
    # rates' decay factors and lengths are per-member tensors in the graph
    agents = ("bbb", "greedy", "eps0.05", *(("bbb:v",) if variant else ()))
    variant_rates = {"lr": 0.05, "scale_lr_factor": 0.1, "lr_final_factor": 0.1}
    variant_rates |= {"lr_decay_steps": 2}
    overrides = {"bbb:v": {**VARIANT, **variant_rates}} if variant else {}
    runs = {}
    for capture in (False, True):
        r = runner(
            agents=agents, seeds=(0, 1), device="cuda", capture=capture, overrides=overrides,
            lr_decay_steps=3,
        )  # fmt: skip
        for _ in range(5):
            r.step()
        runs[capture] = r.state_dict()
    eager, captured = runs[False], runs[True]
    assert torch.equal(eager["buffer_y"], captured["buffer_y"])  # the same decisions
    assert torch.equal(eager["regret"], captured["regret"])
    torch.testing.assert_close(eager["params"], captured["params"], rtol=1e-5, atol=1e-6)
