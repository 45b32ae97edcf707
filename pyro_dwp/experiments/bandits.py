"""The Mushroom contextual bandit of Blundell et al. (2015), Section 5.3, and its agents.

At each step the environment shows a mushroom (a one-hot context, :mod:`pyro_dwp.data.mushroom`);
the agent eats (action :data:`EAT`) or passes (:data:`PASS`). Eating an edible mushroom pays
+5, a poisonous one -35 or +5 with probability 1/2 each; passing pays 0. The oracle eats exactly
the edible ones and earns 5 or 0. The regret of a step is the oracle's reward minus the agent's
(the reward received, so a lucky poisonous meal counts -5); its expectation is 5 for passing an
edible mushroom, 15 for eating a poisonous one, 0 otherwise.

Agents value a (context, action) pair with one network, 2 x 100 ReLU
(``(B, context_dim + 2) -> (B, 1)``: the context and the action one-hot in, the expected reward
out), trained online after each step on minibatches drawn from a buffer of the last interactions:

- :class:`ThompsonBBBAgent`: Bayes by Backprop; each decision uses one posterior draw of the
  weights (Thompson sampling);
- :class:`GreedyAgent`: a deterministic network and epsilon-greedy exploration (``epsilon=0``:
  greedy).

Every random choice has a seeded source, and :meth:`state_dict` / :meth:`load_state_dict` of the
environment, buffers and agents capture it, so a run can be checkpointed and resumed exactly.
"""

from __future__ import annotations

import math
import zlib
from functools import partial
from typing import Any, Literal, get_args

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor, nn
from torch.func import functional_call

from pyro_dwp.bnn import BNN
from pyro_dwp.distributions import ScaleMixtureNormal
from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer.checkpoint import set_param_store_state
from pyro_dwp.infer.compiled import CompiledSVI, compile_or_warn
from pyro_dwp.infer.kl import KLScaleMessenger, KLScheme, kl_weights
from pyro_dwp.infer.optim import JointAdam, name_rate_factor
from pyro_dwp.likelihoods import Gaussian
from pyro_dwp.models import mlp

__all__ = [
    "EAT",
    "KLSize",
    "NUM_ACTIONS",
    "PASS",
    "GreedyAgent",
    "MushroomBandit",
    "RegretLog",
    "ReplayBuffer",
    "ThompsonBBBAgent",
    "agent_seed",
    "bandit_net",
    "check_kl_size",
    "expected_reward",
    "network_inputs",
    "oracle_reward",
    "reward",
]

EAT = 0
"""Action: eat the mushroom."""
PASS = 1
"""Action: pass."""
NUM_ACTIONS = 2
"""Eat and pass."""
_EDIBLE_REWARD = 5.0
_POISON_REWARD = -35.0

KLSize = Literal["buffer", "seen", "capacity"]
"""The dataset size that weights a BBB agent's KL: the interactions in the buffer, every
interaction so far, or the buffer's capacity from the first step on (:class:`ThompsonBBBAgent`'s
``kl_size``)."""


def check_kl_size(kl_size: str) -> None:
    """Raise ``ValueError`` naming ``kl_size`` unless it is one of :data:`KLSize`."""
    if kl_size not in get_args(KLSize):
        raise ValueError(f"kl_size must be one of {list(get_args(KLSize))}, got {kl_size!r}")


def reward(edible: Tensor, action: Tensor, coin: Tensor) -> Tensor:
    """Rewards of the paper: eat edible +5; eat poisonous -35 if ``coin`` else +5; pass 0.

    Args:
        edible: bool ``(...)``.
        action: int ``(...)``, :data:`EAT` or :data:`PASS`.
        coin: bool ``(...)``, the poisonous meal's coin flip (True: -35).

    Returns:
        float32 ``(...)``.
    """
    eaten = torch.where(edible | ~coin, _EDIBLE_REWARD, _POISON_REWARD)
    return torch.where(action == EAT, eaten, 0.0).float()


def expected_reward(edible: Tensor, action: Tensor) -> Tensor:
    """Expected reward over the coin: eat edible 5, eat poisonous -15, pass 0; float32 ``(...)``."""
    eaten = torch.where(edible, _EDIBLE_REWARD, (_EDIBLE_REWARD + _POISON_REWARD) / 2)
    return torch.where(action == EAT, eaten, 0.0).float()


def oracle_reward(edible: Tensor) -> Tensor:
    """The oracle's reward (it eats exactly the edible mushrooms): 5 or 0, float32 ``(...)``."""
    return torch.where(edible, _EDIBLE_REWARD, 0.0).float()


class MushroomBandit:
    """The bandit: a seeded stream of mushrooms, each drawn uniformly with replacement, and one
    coin flip per step.

    The stream depends on ``seed`` only: index and coin are drawn every step, whatever the agents
    do, so agents run on the same seed see the same mushrooms and the same coins, and the first
    ``T`` steps do not depend on how many follow.

    Args:
        contexts: One-hot contexts ``(N, D)``.
        edible: bool ``(N,)``.
        seed: Seed of the stream.
    """

    def __init__(self, contexts: Tensor, edible: Tensor, *, seed: int) -> None:
        if contexts.dim() != 2 or edible.shape != contexts.shape[:1]:
            raise ValueError(
                f"contexts must be (N, D) and edible (N,), got {tuple(contexts.shape)} and "
                f"{tuple(edible.shape)}"
            )
        self.contexts = contexts
        self.edible = edible.bool()
        self._gen = torch.Generator().manual_seed(seed)
        self.index = -1
        self.coin = False

    @property
    def context_dim(self) -> int:
        """``D``."""
        return self.contexts.shape[1]

    def observe(self) -> Tensor:
        """Draw the next mushroom and coin; return its context ``(D,)``."""
        self.index = int(torch.randint(len(self.contexts), (), generator=self._gen))
        self.coin = bool(torch.rand((), generator=self._gen) < 0.5)
        return self.contexts[self.index]

    def reward(self, action: int) -> float:
        """The reward of ``action`` on the current mushroom and coin."""
        self._check_observed()
        edible, coin = self.edible[self.index], torch.tensor(self.coin)
        return float(reward(edible, torch.tensor(action), coin))

    def oracle_reward(self) -> float:
        """The oracle's reward on the current mushroom: 5 or 0."""
        self._check_observed()
        return float(oracle_reward(self.edible[self.index]))

    def oracle_action(self) -> int:
        """:data:`EAT` if the current mushroom is edible, else :data:`PASS`."""
        self._check_observed()
        return EAT if bool(self.edible[self.index]) else PASS

    def _check_observed(self) -> None:
        if self.index < 0:
            raise RuntimeError("no mushroom yet: call observe() first")

    def state_dict(self) -> dict[str, Any]:
        """The stream's position: generator state, current index and coin."""
        return {"rng": self._gen.get_state(), "index": self.index, "coin": self.coin}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._gen.set_state(state["rng"])
        self.index, self.coin = state["index"], state["coin"]


class RegretLog:
    """Cumulative regret of one agent, with the curve recorded every ``every`` steps.

    Args:
        every: Steps between points of :attr:`curve`.
    """

    def __init__(self, every: int = 100) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.steps = 0
        self.total = 0.0
        self.curve: list[float] = []

    def add(self, oracle: float, received: float) -> None:
        """Record one step: regret ``oracle - received``."""
        self.total += oracle - received
        self.steps += 1
        if self.steps % self.every == 0:
            self.curve.append(self.total)

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "steps": self.steps, "total": self.total, "curve": self.curve}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.every, self.steps, self.total = state["every"], state["steps"], state["total"]
        self.curve = list(state["curve"])


class ReplayBuffer:
    """The last ``capacity`` interactions as network inputs and rewards, a ring buffer.

    Args:
        capacity: Interactions kept (the paper: 4,096).
        context_dim: ``D``.
        seed: Seed of the minibatch draws (a CPU generator, whatever the device).
        device: Where the stored tensors live.
    """

    def __init__(
        self, capacity: int, context_dim: int, *, seed: int, device: torch.device | str = "cpu"
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.x = torch.zeros(capacity, context_dim + NUM_ACTIONS, device=device)
        self.y = torch.zeros(capacity, 1, device=device)
        self.size = 0
        self.next = 0
        self.seen = 0
        """Interactions added so far, those replaced included."""
        self._gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, context: Tensor, action: int, received: float) -> None:
        """Store ``(context (D,), action, reward)``, replacing the oldest when full."""
        actions = torch.tensor([action], device=context.device)
        self.x[self.next] = network_inputs(context[None], actions)[0]
        self.y[self.next, 0] = received
        self.next = (self.next + 1) % len(self.x)
        self.size = min(self.size + 1, len(self.x))
        self.seen += 1

    def sample(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """A minibatch drawn uniformly with replacement: ``x (B, D + 2)``, ``y (B, 1)``."""
        if self.size == 0:
            raise RuntimeError("the buffer is empty")
        idx = torch.randint(self.size, (batch_size,), generator=self._gen).to(self.x.device)
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict[str, Any]:
        return {
            "x": self.x.clone(),
            "y": self.y.clone(),
            "size": self.size,
            "next": self.next,
            "seen": self.seen,
            "rng": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x, self.y = state["x"].to(self.x.device), state["y"].to(self.y.device)
        self.size, self.next = state["size"], state["next"]
        self.seen = state.get("seen", self.size)  # a state written before it was kept
        self._gen.set_state(state["rng"])


def network_inputs(contexts: Tensor, actions: Tensor) -> Tensor:
    """Network inputs: ``contexts (B, D)`` and int ``actions (B,)`` -> ``(B, D + 2)``."""
    onehot = nn.functional.one_hot(actions, NUM_ACTIONS).to(contexts.dtype)
    return torch.cat([contexts, onehot], dim=-1)


def _both_actions(context: Tensor) -> Tensor:
    """The inputs of eating and passing on one context ``(D,)``: ``(2, D + 2)``."""
    actions = torch.arange(NUM_ACTIONS, device=context.device)
    return network_inputs(context.expand(NUM_ACTIONS, -1), actions)


def agent_seed(name: str, seed: int) -> int:
    """The seed of agent ``name`` on the run of seed ``seed``: derived from both, so that an
    agent's run does not depend on which others run beside it."""
    return seed * 1000 + zlib.crc32(name.encode()) % 1000


def bandit_net(context_dim: int, hidden: tuple[int, ...] = (100, 100)) -> nn.Sequential:
    """The paper's value network, ``(B, context_dim + 2) -> (B, 1)``, ReLU hidden layers."""
    return mlp(context_dim + NUM_ACTIONS, hidden, 1)


class GreedyAgent:
    """Epsilon-greedy on a deterministic network trained by Adam on the squared error.

    Args:
        context_dim: ``D``.
        epsilon: Probability of a uniformly random action (0: greedy).
        seed: Seed of the network's initialisation, the exploration and the minibatches.
        hidden: Hidden layer sizes.
        buffer_size: Interactions kept for training.
        batch_size: Minibatch size.
        num_batches: Minibatches (Adam steps) per bandit step.
        lr: Adam learning rate.
        device: Where the network and buffer live (contexts must be there too).
    """

    def __init__(
        self,
        context_dim: int,
        *,
        epsilon: float = 0.0,
        seed: int = 0,
        hidden: tuple[int, ...] = (100, 100),
        buffer_size: int = 4096,
        batch_size: int = 64,
        num_batches: int = 64,
        lr: float = 1e-3,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon
        self.batch_size, self.num_batches = batch_size, num_batches
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = bandit_net(context_dim, hidden).to(device)
        self.optim = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.buffer = ReplayBuffer(buffer_size, context_dim, seed=seed + 1, device=device)
        self._gen = torch.Generator().manual_seed(seed + 2)

    def act(self, context: Tensor) -> int:
        """The action on a context ``(D,)``: random w.p. epsilon, else the larger value."""
        explore = torch.rand((), generator=self._gen) < self.epsilon  # drawn every step
        random_action = int(torch.randint(NUM_ACTIONS, (), generator=self._gen))
        if explore:
            return random_action
        with torch.no_grad():
            return int(self.net(_both_actions(context))[:, 0].argmax())

    def learn(self, context: Tensor, action: int, received: float) -> None:
        """Store the interaction, then take ``num_batches`` Adam steps on the buffer."""
        self.buffer.add(context, action, received)
        for _ in range(self.num_batches):
            self.train_step(*self.buffer.sample(self.batch_size))

    def train_step(self, x: Tensor, y: Tensor) -> None:
        """One Adam step on the squared error of the minibatch ``(x (B, D + 2), y (B, 1))``."""
        loss = nn.functional.mse_loss(self.net(x), y)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optim": self.optim.state_dict(),
            "buffer": self.buffer.state_dict(),
            "rng": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optim.load_state_dict(state["optim"])
        self.buffer.load_state_dict(state["buffer"])
        self._gen.set_state(state["rng"])


class ThompsonBBBAgent:
    """Bayes by Backprop with Thompson sampling.

    The model is a :class:`~pyro_dwp.BNN` of :func:`bandit_net` with the scale-mixture prior and
    a :class:`~pyro_dwp.Gaussian` likelihood (noise scale fixed, or learnt as a point estimate); the
    guide :class:`~pyro_dwp.guides.BBBNormal`. After each step, ``num_batches`` SVI steps
    (``Trace_ELBO`` with ``num_particles`` vectorised weight samples) on minibatches of the buffer,
    the data term scaled to the buffer's current size (so the KL term is weighted as for a
    dataset of that size; ``kl_scheme`` spreads it over the ``num_batches`` updates), all with
    one :class:`~pyro_dwp.infer.JointAdam` kept across steps.
    Each decision draws one weight sample from the guide and takes the action of larger value.

    Pyro's param store and global RNG hold the agent's parameters and its posterior draws: one
    such agent per process (the constructor clears the param store).

    Args:
        context_dim: ``D``.
        seed: Seed of the network's initialisation and of the minibatches (the posterior draws
            use Pyro's RNG, which the caller seeds).
        hidden: Hidden layer sizes.
        buffer_size: Interactions kept for training.
        batch_size: Minibatch size.
        num_batches: SVI steps per bandit step.
        num_particles: Weight samples per SVI step (the paper: 2).
        lr: Adam learning rate.
        scale_lr_factor: The posterior scales (the guide's ``rho``) learn at
            ``scale_lr_factor * lr``, the locations at ``lr``: with Adam every parameter moves by
            about its rate per update whatever the size of its gradient, so this sets how fast
            the scales can follow the KL term.
        pi, sigma1, sigma2: The scale-mixture prior.
        init_scale: Initial posterior standard deviation of every weight.
        noise: Fixed noise standard deviation of the likelihood, or ``None`` to learn it.
        init_noise: Initial noise standard deviation when learnt.
        kl_size: The dataset size ``N`` that weights the KL (the data term is scaled by
            ``max(N, B) / B``): ``"buffer"``, the interactions in the buffer (at most
            ``buffer_size``); ``"seen"``, every interaction so far, the buffer standing for all
            of them (the posterior then keeps concentrating after the buffer is full);
            ``"capacity"``, ``buffer_size`` from the first step on (Blundell et al.'s weights
            read literally: a step's ``K`` minibatches of ``B`` stand for a dataset of ``K * B``
            = 4,096 however few interactions the buffer holds yet, so the prior does not
            dominate the first steps).
        kl_scheme: The KL factor of the step's ``k``-th of ``K = num_batches`` updates,
            ``K * pi_k`` of :func:`~pyro_dwp.infer.kl_weights` (the updates standing for one
            pass over the buffer): ``"uniform"``, 1 each; ``"blundell"``,
            ``K * 2^-k / (1 - 2^-K)`` (Blundell et al., Sec. 3.4). Either way the factors
            sum to ``K``: over a step the KL counts as in ``K`` uniform updates.
        device: Where the model, guide and buffer live (contexts must be there too).
        engine: ``"pyro"`` (Pyro's ``SVI``) or ``"compiled"``: the same steps as plain PyTorch
            (:func:`~pyro_dwp.infer.compiled.compile_svi`, built at the first :meth:`learn`;
            the same loss and noise, equal to Pyro's to float rounding).
    """

    def __init__(
        self,
        context_dim: int,
        *,
        seed: int = 0,
        hidden: tuple[int, ...] = (100, 100),
        buffer_size: int = 4096,
        batch_size: int = 64,
        num_batches: int = 64,
        num_particles: int = 2,
        lr: float = 1e-3,
        scale_lr_factor: float = 1.0,
        pi: float = 0.5,
        sigma1: float = 1.0,
        sigma2: float = math.exp(-6),
        init_scale: float = 0.01,
        noise: float | None = 1.0,
        init_noise: float = 1.0,
        kl_size: KLSize = "buffer",
        kl_scheme: KLScheme = "uniform",
        device: torch.device | str = "cpu",
        engine: str = "pyro",
    ) -> None:
        if engine not in ("pyro", "compiled"):
            raise ValueError(f"engine must be 'pyro' or 'compiled', got {engine!r}")
        check_kl_size(kl_size)
        self.kl_size, self.kl_scheme = kl_size, kl_scheme
        self._kl_factors = (kl_weights(num_batches, kl_scheme) * num_batches).tolist()
        self._kl_scale = KLScaleMessenger()  # its scale set before each update
        self.batch_size, self.num_batches = batch_size, num_batches
        self.engine, self._num_particles = engine, num_particles
        self._compiled: CompiledSVI | None = None
        pyro.clear_param_store()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = bandit_net(context_dim, hidden).to(device)
        self.likelihood = Gaussian(buffer_size, noise, init_scale=init_noise)
        self.model = BNN(net, ScaleMixtureNormal(pi, sigma1, sigma2), self.likelihood)
        self.guide = BBBNormal(self.model, init_scale=init_scale)
        lr_factor = None
        if scale_lr_factor != 1:
            lr_factor = partial(name_rate_factor, contains=".scales.", factor=scale_lr_factor)
        self.optim = JointAdam(lr, lr_factor=lr_factor)
        elbo = Trace_ELBO(
            num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
        )
        model, guide = self.model, self.guide
        if kl_scheme != "uniform":  # uniform factors are all 1: no handler on the hot path
            model, guide = self._kl_scale(model), self._kl_scale(guide)
        self.svi = SVI(model, guide, self.optim, elbo)
        self.buffer = ReplayBuffer(buffer_size, context_dim, seed=seed + 1, device=device)
        self._run_guide()  # set the guide up

    def _run_guide(self) -> None:
        """Run the guide once, leaving Pyro's RNG as it was: it sets itself up on its first call
        and afterwards takes its parameters from the param store."""
        x0 = self.buffer.x[:1]
        with torch.no_grad(), pyro.poutine.block(), torch.random.fork_rng():
            self.guide(x0, torch.zeros(1, 1, device=x0.device))

    def act(self, context: Tensor) -> int:
        """Thompson sampling: the larger value under one posterior draw of the weights."""
        with torch.no_grad():
            weights = {
                n: torch.addcmul(self.guide.loc(n), self.guide.scale(n), torch.randn_like(p))
                for n, p in self.model.net.named_parameters()
            }
            values = functional_call(self.model.net, weights, (_both_actions(context),))
        return int(values[:, 0].argmax())

    def learn(self, context: Tensor, action: int, received: float) -> None:
        """Store the interaction, then take ``num_batches`` SVI steps on the buffer.

        Raises:
            FloatingPointError: On a NaN or infinite loss.
        """
        self.buffer.add(context, action, received)
        self.likelihood.dataset_size = self._dataset_size()
        for factor in self._kl_factors:
            x, y = self.buffer.sample(self.batch_size)
            loss = self._step(x, y, factor)
            if not math.isfinite(loss):
                raise FloatingPointError(f"BBB agent: the loss is {loss}")

    def _step(self, x: Tensor, y: Tensor, kl_factor: float) -> float:
        """One SVI step on the minibatch ``(x (B, D + 2), y (B, 1))``, its KL term scaled by
        ``kl_factor``; the loss."""
        if self.engine == "pyro":
            self._kl_scale.scale = kl_factor
            return self.svi.step(x, y)
        if self._compiled is None:
            self._compiled = compile_or_warn(
                self.engine, self.model, self.guide, x, y, optim=self.optim,
                num_particles=self._num_particles, vectorize_particles=True, stacklevel=3,
            )  # fmt: skip
            if self._compiled is None:
                self.engine = "pyro"
                return self._step(x, y, kl_factor)
        return self._compiled.step(x, y, kl_factor)[0]

    def state_dict(self) -> dict[str, Any]:
        """Parameters (Pyro's param store), Adam state and buffer; not Pyro's RNG."""
        return {
            "params": pyro.get_param_store().get_state(),
            "optim": self.optim.get_state(),
            "buffer": self.buffer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load :meth:`state_dict`; call before the first :meth:`learn`."""
        device = self.buffer.x.device
        set_param_store_state(state["params"], device)
        self._run_guide()  # the guide's module reads its parameters from the store
        self._compiled = None  # compiled again on the loaded parameters
        self.optim.set_state(state["optim"])
        self.buffer.load_state_dict(state["buffer"])
        self.likelihood.dataset_size = max(1, self._dataset_size())

    def _dataset_size(self) -> int:
        """``N`` of the KL weighting (``kl_size``)."""
        sizes = {"buffer": len(self.buffer), "seen": self.buffer.seen}
        return sizes.get(self.kl_size, len(self.buffer.x))  # "capacity"
