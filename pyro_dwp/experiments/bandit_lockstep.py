"""Many Mushroom-bandit agents in lockstep: one batched network, optionally one CUDA graph a step.

:class:`LockstepBandit` runs ``E`` members, each an agent of :mod:`pyro_dwp.experiments.bandits`
(``bbb``: Bayes by Backprop with Thompson sampling; ``greedy`` and ``eps<E>``: epsilon-greedy on
a deterministic network) on the stream of one seed, all in lockstep: one bandit step decides,
rewards, records and trains every member at once, their parameters stacked along a leading
member dimension. Members of the same seed see the same mushrooms and coin flips, those of
:class:`~pyro_dwp.experiments.bandits.MushroomBandit` with that seed (the stream of
``pyro-dwp mushroom --seed S``), and start from the same weights as that job's agents.

It is a compiled engine of the reference agents, not another method: each member optimises
exactly its reference agent's loss, with the same Adam update,

- ``bbb`` (:class:`~pyro_dwp.experiments.bandits.ThompsonBBBAgent`): Pyro's ``Trace_ELBO`` with
  ``num_particles`` vectorised weight samples ``w = mu + softplus(rho) * eps`` of the guide
  :class:`~pyro_dwp.guides.BBBNormal`, the :class:`~pyro_dwp.distributions.ScaleMixtureNormal`
  prior on every weight and bias, the Gaussian likelihood of fixed noise (or of a noise learnt as
  a point estimate, ``learn_noise``: Pyro's positive parameter, ``exp`` of an unconstrained
  one), its data term scaled by ``max(N, B) / B`` for a buffer of ``N`` interactions (or ``N``
  seen, or the buffer's capacity: ``kl_size``) and minibatches of ``B``, its KL term by
  ``K * pi_k`` on the step's ``k``-th of ``K`` updates (:func:`~pyro_dwp.infer.kl_weights`;
  ``kl_scheme``);
- ``greedy``, ``eps<E>`` (:class:`~pyro_dwp.experiments.bandits.GreedyAgent`): the mean squared
  error;

only the random draws differ (minibatch rows, weight noise, exploration: drawn on the device,
batched over the members). A step reads nothing back to the host: the regrets are read by
:meth:`LockstepBandit.regret` when the caller wants them (e.g. every 100 steps).

On a CUDA device a whole bandit step (decisions, rewards, buffer writes, the ``num_batches``
updates with their minibatch and noise draws, Adam) is captured once as a CUDA graph and
replayed; without CUDA (or with ``capture=False``) the same function runs eagerly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pyro.distributions import constraints
from torch import Tensor, nn
from torch.distributions import transform_to

from pyro_dwp.distributions import ScaleMixtureNormal
from pyro_dwp.experiments.bandits import (
    NUM_ACTIONS,
    KLSize,
    MushroomBandit,
    agent_seed,
    bandit_net,
    check_kl_size,
    oracle_reward,
    reward,
)
from pyro_dwp.infer.kl import KLScheme, kl_weights

__all__ = ["LockstepBandit", "agent_epsilon"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as the reference agents use them
_ADAM_EPS = 1e-8
_WARMUP_STEPS = 3  # eager steps on a side stream before capture, as PyTorch asks


def agent_epsilon(name: str) -> float | None:
    """The exploration probability of agent ``name``: ``None`` for ``bbb`` and its variants
    ``bbb:<label>`` (Thompson sampling), 0 for ``greedy``, ``E`` for ``eps<E>`` (``0 < E <= 1``).

    Raises:
        ValueError: For another name (naming the option ``agents``).
    """
    if name == "bbb" or (name.startswith("bbb:") and len(name) > 4):
        return None
    if name == "greedy":
        return 0.0
    if name.startswith("eps"):
        try:
            epsilon = float(name[3:])
        except ValueError:
            epsilon = math.nan
        if 0.0 < epsilon <= 1.0:
            return epsilon
    raise ValueError(
        f"agents: unknown agent {name!r}: choose bbb, bbb:<label>, greedy or eps<E> with 0 < E <= 1"
    )


BBB_SETTINGS = (
    "lr", "lr_final_factor", "lr_decay_steps", "pi", "sigma1", "sigma2", "init_scale", "noise",
    "scale_lr_factor", "kl_size",
)  # fmt: skip
"""The settings that :class:`LockstepBandit`'s ``overrides`` may give a ``bbb`` agent (numbers,
``kl_size`` a :data:`~pyro_dwp.experiments.bandits.KLSize`); the other agents take
:data:`RATE_SETTINGS` only."""

RATE_SETTINGS = ("lr", "lr_final_factor", "lr_decay_steps")
"""The settings that :class:`LockstepBandit`'s ``overrides`` may give any agent."""


class LockstepBandit:
    """Agents x seeds of the Mushroom bandit as one batched network (see the module's docstring).

    Members are ``(agent, seed)`` for every agent and seed; :attr:`members` lists them in the
    order of every member dimension (the ``bbb`` members first). Parameters live in one flat
    tensor: per ``bbb`` member ``mu`` then ``rho`` (``sigma = softplus(rho)``, as
    :class:`~pyro_dwp.guides.BBBNormal`), per other member the network's weights, each laid out
    as ``bandit_net``'s parameters in order, flattened (``nn.Linear`` weights ``(out, in)``);
    with ``learn_noise``, last, the log noise of each ``bbb`` member.

    Every random draw of the agents uses one generator: on a CUDA device that device's default
    generator (the one a CUDA graph draws from: the runner seeds it), elsewhere a private one.

    Args:
        contexts: One-hot contexts ``(N, D)`` (any device: the stream is drawn on the CPU).
        edible: bool ``(N,)``.
        agents: Agent names, ``bbb``, ``greedy`` or ``eps<E>``.
        seeds: One stream per seed; every agent runs on each.
        hidden: Hidden layer sizes.
        buffer_size: Interactions each member keeps.
        batch_size: Minibatch size ``B``.
        num_batches: Updates per bandit step ``K``.
        num_particles: Weight samples ``P`` of a ``bbb`` update.
        lr: Adam learning rate.
        scale_lr_factor: ``bbb``'s posterior scales (``rho``) learn at ``scale_lr_factor * lr``
            (the reference agent's option of the same name).
        pi, sigma1, sigma2: The scale-mixture prior of ``bbb``.
        init_scale: Initial posterior standard deviation of ``bbb``.
        noise: Noise standard deviation of ``bbb``'s likelihood: fixed, or its initial value
            under ``learn_noise``.
        learn_noise: Learn each ``bbb`` member's noise as a point estimate (the reference
            agent's ``noise=None``, ``init_noise=noise``), by the same Adam as the rest.
        overrides: Per agent name, settings of its own in place of the arguments above
            (:data:`BBB_SETTINGS` for ``bbb`` agents, :data:`RATE_SETTINGS` for the others),
            e.g. ``agents=["bbb", "bbb:narrow"], overrides={"bbb:narrow": {"sigma1": 0.05}}``
            screens two priors side by side in one batched network.
        kl_size: ``N`` of ``bbb``'s KL weighting, as the reference agent's: ``"buffer"``
            (the interactions stored), ``"seen"`` (every interaction so far) or
            ``"capacity"`` (``buffer_size`` from the first step on).
        kl_scheme: How ``bbb``'s KL term is spread over the ``K`` updates of a step, as the
            reference agent's: ``"uniform"`` (each update's KL weighted by 1) or
            ``"blundell"`` (the ``k``-th by ``K * 2^-k / (1 - 2^-K)``, Blundell et al.'s
            Sec. 3.4 weights, the ``K`` minibatches standing for one pass over the buffer).
        device: Where the members live.
        capture: Capture a step as a CUDA graph (default: on a CUDA device).
        stream_chunk: Steps of the mushroom stream drawn (on the CPU) and moved to the device
            at a time.
        rng_seed: Seed of the agents' generator.
        lr_final_factor: Every member's Adam rate is multiplied by
            ``lr_final_factor ** min(t / lr_decay_steps, 1)`` after ``t`` interactions: decayed
            geometrically to ``lr_final_factor`` times its value over the first
            ``lr_decay_steps`` steps, then constant (1: a constant rate, the reference agents'
            behaviour). A rate that falls once the agents have learnt slows their forgetting
            of what has left the buffer (``benchmarks/results/mushroom_forgetting.md``). An
            agent's ``overrides`` may give it a factor of its own.
        lr_decay_steps: The steps of the decay; an agent's ``overrides`` may give it a length
            of its own (a number >= 1).
    """

    def __init__(
        self,
        contexts: Tensor,
        edible: Tensor,
        *,
        agents: Sequence[str],
        seeds: Sequence[int],
        hidden: Sequence[int] = (100, 100),
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
        noise: float = 1.0,
        kl_size: KLSize = "buffer",
        kl_scheme: KLScheme = "uniform",
        learn_noise: bool = False,
        overrides: Mapping[str, Mapping[str, float | str]] | None = None,
        device: torch.device | str = "cpu",
        capture: bool | None = None,
        stream_chunk: int = 100,
        rng_seed: int = 0,
        lr_final_factor: float = 1.0,
        lr_decay_steps: int = 10_000,
    ) -> None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        _check_options(
            agents=agents, seeds=seeds, hidden=hidden, buffer_size=buffer_size,
            batch_size=batch_size, num_batches=num_batches, num_particles=num_particles,
            stream_chunk=stream_chunk, lr=lr, pi=pi, sigma1=sigma1, sigma2=sigma2,
            init_scale=init_scale, noise=noise, scale_lr_factor=scale_lr_factor, kl_size=kl_size,
            lr_final_factor=lr_final_factor, lr_decay_steps=lr_decay_steps,
        )  # fmt: skip
        if contexts.dim() != 2 or edible.shape != contexts.shape[:1]:
            raise ValueError(
                f"contexts must be (N, D) and edible (N,), got {tuple(contexts.shape)} and "
                f"{tuple(edible.shape)}"
            )
        self.kl_scheme, self.learn_noise = kl_scheme, learn_noise
        base: dict[str, float | str] = {"lr": lr, "lr_final_factor": lr_final_factor}
        base |= {"lr_decay_steps": lr_decay_steps}
        base |= {"pi": pi, "sigma1": sigma1, "sigma2": sigma2}
        base |= {"init_scale": init_scale, "noise": noise, "scale_lr_factor": scale_lr_factor}
        base |= {"kl_size": kl_size}
        settings = _agent_settings(agents, overrides or {}, base)
        if capture is None:
            capture = device.type == "cuda"
        if capture and device.type != "cuda":
            raise ValueError(f"capture: a CUDA graph needs a CUDA device, got device {device}")
        self.device, self.capture = device, capture
        self.batch_size, self.num_batches = batch_size, num_batches
        self.num_particles, self.buffer_size = num_particles, buffer_size
        self.seeds = [int(s) for s in seeds]
        bbb = [(a, s) for a in agents if agent_epsilon(a) is None for s in self.seeds]
        others = [(a, s) for a in agents if agent_epsilon(a) is not None for s in self.seeds]
        self.members: list[tuple[str, int]] = bbb + others
        """``(agent, seed)`` of each member, in the order of the member dimensions."""
        self.num_bbb = len(bbb)
        self.settings = {a: settings[a] for a in agents}
        """Each agent's ``lr``, ``lr_final_factor`` and ``lr_decay_steps`` (and a ``bbb`` agent's
        prior, initial scale, noise, scales' rate factor and ``kl_size``): the arguments with
        ``overrides`` applied."""
        num = len(self.members)
        contexts, edible = contexts.detach().cpu().float(), edible.detach().cpu().bool()
        context_dim = contexts.shape[1]

        # the layout of one member's network in a flat vector: (weight, bias) slices per layer
        template = bandit_net(context_dim, tuple(hidden))
        shapes = [p.shape for p in template.parameters()]
        self._layers: list[tuple[slice, slice, int, int]] = []
        offset = 0
        for out_f, in_f in shapes[::2]:
            end = offset + out_f * in_f
            self._layers.append((slice(offset, end), slice(end, end + out_f), out_f, in_f))
            offset = end + out_f
        self.num_weights = offset
        """``W``: the parameters of one network."""
        self._piece_sizes = [sl.stop - sl.start for layer in self._layers for sl in layer[:2]]
        self._site_names = [n for n, _ in template.named_parameters()]

        inits = []
        for name, seed in self.members:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(agent_seed(name, seed))
                net = bandit_net(context_dim, tuple(hidden))
            inits.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
        init = torch.stack(inits)  # (E, W)
        to_rho = transform_to(constraints.softplus_positive).inv
        rho = to_rho(self._bbb_values("init_scale")).unsqueeze(1)  # (E_bbb, 1)
        log_noise = self._bbb_values("noise").log() if learn_noise else torch.zeros(0)
        flat = torch.cat(
            [init[: self.num_bbb].flatten(),
             rho.expand(self.num_bbb, offset).flatten(),
             init[self.num_bbb :].flatten(),
             log_noise]
        )  # fmt: skip
        lrs = [settings[a]["lr"] for a, _ in self.members]
        rho_lrs = [settings[a]["lr"] * settings[a]["scale_lr_factor"] for a, _ in bbb]
        logs = [math.log(settings[a]["lr_final_factor"]) for a, _ in self.members]
        lengths = [float(settings[a]["lr_decay_steps"]) for a, _ in self.members]
        self._lr = self._per_element(lrs, rho_lrs)
        self._lr_log_factor = self._per_element(logs)
        self._lr_decay_steps = self._per_element(lengths)
        self._decays = any(logs)  # False: every member at a constant rate
        self.params = flat.to(device).requires_grad_()
        """The flat parameter vector (see the class docstring); a leaf updated in place."""
        self._adam_m = torch.zeros_like(self.params, requires_grad=False)
        self._adam_v = torch.zeros_like(self.params, requires_grad=False)
        self._adam_steps = torch.zeros((), dtype=torch.float64, device=device)

        self._streams = [MushroomBandit(contexts, edible, seed=s) for s in self.seeds]
        self._chunk = stream_chunk
        self._chunk_start: list[dict[str, Any]] = []
        self._chunk_pos = 0
        self._chunk_index = torch.zeros(len(self.seeds), stream_chunk, dtype=torch.long)
        self._chunk_coin = torch.zeros(len(self.seeds), stream_chunk, dtype=torch.bool)

        def on_device(t: Tensor) -> Tensor:
            return t.to(device)

        seed_slot = {s: i for i, s in enumerate(self.seeds)}
        self._contexts, self._edible = on_device(contexts), on_device(edible)
        self._member_seed = on_device(torch.tensor([seed_slot[s] for _, s in self.members]))
        eps = [agent_epsilon(a) for a, _ in self.members[self.num_bbb :]]
        self._epsilon = on_device(torch.tensor(eps, dtype=torch.float32))
        self._members = on_device(torch.arange(num))
        # the KL factor of each of a step's updates, K * pi_k (all 1 under "uniform")
        self._kl = on_device((kl_weights(num_batches, kl_scheme) * num_batches).float())
        # no validation: checking a sample's support reads it back to the host; the prior's
        # and the noise's parameters are scalars where every bbb member shares them, else
        # (E_bbb, 1, 1), against weights (E_bbb, P, W) and residuals (E_bbb, P, B)
        prior = [self._bbb_setting(k, device) for k in ("pi", "sigma1", "sigma2")]
        self._prior = ScaleMixtureNormal(*prior, validate_args=False)
        self._noise = self._bbb_setting("noise", device)
        # each bbb member's kl_size, the N of its KL weighting (see _scale)
        self._kl_sizes: list[str] = [str(self.settings[a]["kl_size"]) for a, _ in bbb]

        # the state a step changes in place (a CUDA graph reads and writes these very tensors)
        self._x = torch.zeros(num, buffer_size, context_dim + NUM_ACTIONS, device=device)
        self._y = torch.zeros(num, buffer_size, device=device)
        self._t = torch.zeros((), dtype=torch.long, device=device)  # interactions so far
        self._regret = torch.zeros(num, dtype=torch.float64, device=device)
        self._index = torch.zeros(len(self.seeds), dtype=torch.long, device=device)
        self._coin = torch.zeros(len(self.seeds), dtype=torch.bool, device=device)
        self._action = torch.zeros(num, dtype=torch.long, device=device)
        self._received = torch.zeros(num, device=device)
        self.steps = 0
        """Bandit steps done."""

        if device.type == "cuda":
            self._gen = torch.cuda.default_generators[device.index]
        else:
            self._gen = torch.Generator(device=device)
        self._gen.manual_seed(rng_seed)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._draw_chunk()

    # ------------------------------------------------------------------ public API

    def step(self) -> None:
        """One bandit step of every member: observe the seed's next mushroom, act, collect the
        reward and the regret, store the interaction, take ``num_batches`` updates. No host
        synchronisation (the stream is moved to the device a chunk at a time)."""
        if self._chunk_pos == self._chunk:
            self._draw_chunk()
        self._index.copy_(self._chunk_index_dev[:, self._chunk_pos])
        self._coin.copy_(self._chunk_coin_dev[:, self._chunk_pos])
        self._chunk_pos += 1
        if self.capture:
            if self._graph is None:
                self._graph = self._capture()
            self._graph.replay()
        else:
            self._step_body()
        self.steps += 1

    def regret(self) -> Tensor:
        """Cumulative regret of each member, float64 ``(E,)`` on the CPU (a host sync)."""
        return self._regret.cpu()

    @property
    def actions(self) -> Tensor:
        """The last step's action of each member, int ``(E,)`` on the device."""
        return self._action

    @property
    def rewards(self) -> Tensor:
        """The last step's reward of each member, float32 ``(E,)`` on the device."""
        return self._received

    @property
    def mushrooms(self) -> Tensor:
        """The last step's mushroom index of each seed, int ``(S,)`` on the device."""
        return self._index

    def losses(
        self, rows: Tensor, eps: Tensor, params: Tensor | None = None, update: int = 0
    ) -> Tensor:
        """Each member's loss on a minibatch of its buffer, as its reference agent's.

        ``bbb``: the negative ELBO of ``Trace_ELBO`` (``P`` particles, data term scaled by
        ``max(N, B) / B`` with ``N`` the interactions stored, or seen under
        ``kl_size="seen"``, or ``buffer_size`` under ``"capacity"``, KL term by ``K * pi_k``
        of ``kl_scheme`` for ``update = k - 1``);
        others: the mean squared error.

        Args:
            rows: int ``(E, B)``, rows of each member's buffer.
            eps: ``(E_bbb, P, W)``, the standard normal noise of the weight samples.
            params: The flat parameter vector (default: :attr:`params`).
            update: Which of a step's ``K`` updates, ``0 .. K - 1`` (it sets the KL factor).

        Returns:
            ``(E,)``.
        """
        self._check_draws(rows, eps, update)
        x, y = self._minibatch(rows)
        params = self.params if params is None else params
        return self._losses(params, x, y, eps, self._scale(), self._kl[update])

    def update(self, rows: Tensor, eps: Tensor, update: int = 0) -> None:
        """Adam step ``update`` (``0 .. K - 1``) of a bandit step for every member, on its
        :meth:`losses` (the building block of a step)."""
        self._check_draws(rows, eps, update)
        self._update(rows, eps, self._scale(), self._rate(), self._kl[update])

    def named_parameters(self, member: int, flat: Tensor | None = None) -> dict[str, Tensor]:
        """One member's part of ``flat`` (default :attr:`params`; e.g. a gradient), as views
        shaped like ``bandit_net``'s parameters: ``{"loc.<name>", "rho.<name>"}`` for ``bbb``,
        ``{"<name>"}`` for the others; with ``learn_noise`` also ``"log_noise"`` (``()``) for
        ``bbb``."""
        if not 0 <= member < len(self.members):
            raise ValueError(f"member must be in [0, {len(self.members)}), got {member}")
        flat = self.params if flat is None else flat
        w, shapes = self.num_weights, self._shapes()
        if member < self.num_bbb:
            loc = flat[member * w : (member + 1) * w]
            rho = flat[(self.num_bbb + member) * w : (self.num_bbb + member + 1) * w]
            parts = {"loc": loc, "rho": rho}
        else:
            parts = {"": flat[(self.num_bbb + member) * w : (self.num_bbb + member + 1) * w]}
        out = {}
        for prefix, vector in parts.items():
            for name, (sl, shape) in zip(self._site_names, shapes, strict=True):
                out[f"{prefix}.{name}" if prefix else name] = vector[sl].view(shape)
        if self.learn_noise and member < self.num_bbb:
            out["log_noise"] = self._split(flat)[3][member].view(())
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (parameters, Adam, buffers, regrets, the stream's
        position, the generator), as CPU copies."""
        return {
            "members": list(self.members),
            "steps": self.steps,
            "params": self.params.detach().cpu().clone(),
            "adam_m": self._adam_m.cpu().clone(),
            "adam_v": self._adam_v.cpu().clone(),
            "adam_steps": self._adam_steps.cpu().clone(),
            "buffer_x": self._x.cpu().clone(),
            "buffer_y": self._y.cpu().clone(),
            "interactions": self._t.cpu().clone(),
            "regret": self._regret.cpu().clone(),
            "stream_start": [dict(s) for s in self._chunk_start],
            "stream_pos": self._chunk_pos,
            "rng": self._gen.get_state(),
            "device_type": self._gen.device.type,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load :meth:`state_dict` (into the same tensors: a captured step stays valid).

        Raises:
            ValueError: If the state belongs to other members, another network or another kind
                of device (its generator's state cannot move between CPU and CUDA).
        """
        members = [tuple(m) for m in state["members"]]
        if members != self.members:
            raise ValueError(f"state of members {members}, but this runner has {self.members}")
        device_type = state.get("device_type", self._gen.device.type)
        if device_type != self._gen.device.type:
            raise ValueError(
                f"state written on {device_type}, but this runner is on {self._gen.device.type}: "
                f"its random generator cannot move across device kinds; resume with --device "
                f"{device_type}"
            )
        pairs = [
            (self.params, state["params"]), (self._adam_m, state["adam_m"]),
            (self._adam_v, state["adam_v"]), (self._adam_steps, state["adam_steps"]),
            (self._x, state["buffer_x"]), (self._y, state["buffer_y"]),
            (self._t, state["interactions"]), (self._regret, state["regret"]),
        ]  # fmt: skip
        for mine, theirs in pairs:
            if mine.shape != theirs.shape:
                raise ValueError(
                    f"state tensor of shape {tuple(theirs.shape)} where this runner has "
                    f"{tuple(mine.shape)}: another network, buffer or set of members"
                )
        with torch.no_grad():
            for mine, theirs in pairs:
                mine.copy_(theirs)
        self.steps = state["steps"]
        for stream, s in zip(self._streams, state["stream_start"], strict=True):
            stream.load_state_dict(s)
        self._draw_chunk()  # the same chunk again, from its start
        self._chunk_pos = state["stream_pos"]
        self._gen.set_state(state["rng"])

    # ------------------------------------------------------------------ internals

    def _shapes(self) -> list[tuple[slice, tuple[int, ...]]]:
        out: list[tuple[slice, tuple[int, ...]]] = []
        for weight, bias, out_f, in_f in self._layers:
            out += [(weight, (out_f, in_f)), (bias, (out_f,))]
        return out

    def _draw_chunk(self) -> None:
        """Draw the next ``stream_chunk`` mushrooms and coins of every seed on the CPU, as
        :class:`MushroomBandit` does, and move them to the device."""
        self._chunk_start = [s.state_dict() for s in self._streams]
        for i, stream in enumerate(self._streams):
            for j in range(self._chunk):
                stream.observe()
                self._chunk_index[i, j] = stream.index
                self._chunk_coin[i, j] = stream.coin
        self._chunk_index_dev = self._chunk_index.to(self.device)
        self._chunk_coin_dev = self._chunk_coin.to(self.device)
        self._chunk_pos = 0

    def _check_draws(self, rows: Tensor, eps: Tensor, update: int) -> None:
        """Raise ``ValueError`` naming a bad shape of ``rows`` or ``eps``, or a bad ``update``."""
        if not 0 <= update < self.num_batches:
            raise ValueError(f"update must be in [0, {self.num_batches}), got {update}")
        num, p, w = len(self.members), self.num_particles, self.num_weights
        if rows.dim() != 2 or rows.shape[0] != num:
            raise ValueError(f"rows must be ({num}, B), got {tuple(rows.shape)}")
        if eps.shape != (self.num_bbb, p, w):
            raise ValueError(f"eps must be ({self.num_bbb}, {p}, {w}), got {tuple(eps.shape)}")

    def _scale(self) -> Tensor:
        """The data term's scale ``max(N, B) / B``, ``N`` the interactions stored
        (``kl_size="buffer"``), seen (``"seen"``) or the buffer's capacity (``"capacity"``):
        ``()``, or ``(E_bbb, 1)`` where the ``bbb`` members' ``kl_size`` differ."""
        kinds = list(dict.fromkeys(self._kl_sizes)) or ["buffer"]  # (none without bbb members)
        if len(kinds) == 1:
            size = self._kl_n(kinds[0])
        else:
            size = torch.stack([self._kl_n(k) for k in self._kl_sizes]).unsqueeze(1)
        return size.clamp(min=self.batch_size).float() / self.batch_size

    def _kl_n(self, kl_size: str) -> Tensor:
        """``N`` of the KL weighting under ``kl_size``, a long ``()`` on the device."""
        if kl_size == "seen":
            return self._t
        if kl_size == "capacity":
            return torch.full_like(self._t, self.buffer_size)
        return self._t.clamp(max=self.buffer_size)  # "buffer": the interactions stored

    def _minibatch(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """``rows (E, B)`` of each member's buffer: inputs ``(E, B, D + 2)``, rewards ``(E, B)``."""
        members = self._members[:, None]
        return self._x[members, rows], self._y[members, rows]

    def _forward(self, weights: Tensor, x: Tensor) -> Tensor:
        """Networks of flat ``weights (M, W)`` on ``x (M, B, D + 2)``: values ``(M, B)``."""
        m, h = weights.shape[0], x
        # one split into every layer's weight and bias, not a slice each: autograd joins the
        # pieces' gradients in one concatenation where each slice would zero-fill an (M, W) one
        pieces = weights.split(self._piece_sizes, dim=1)
        for i, (_, _, out_f, in_f) in enumerate(self._layers):
            weight = pieces[2 * i].view(m, out_f, in_f)
            h = torch.baddbmm(pieces[2 * i + 1].unsqueeze(1), h, weight.transpose(1, 2))
            if i < len(self._layers) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)

    def _bbb_values(self, name: str) -> Tensor:
        """Setting ``name`` of each ``bbb`` member, float32 ``(E_bbb,)`` on the CPU."""
        return torch.tensor([self.settings[a][name] for a, _ in self.members[: self.num_bbb]])

    def _bbb_setting(self, name: str, device: torch.device) -> float | Tensor:
        """Setting ``name`` of the ``bbb`` members: a float where they share it (or there are
        none), else ``(E_bbb, 1, 1)`` on ``device``."""
        values = [self.settings[a][name] for a, _ in self.members[: self.num_bbb]]
        if len(set(values)) <= 1:
            return values[0] if values else 1.0
        return torch.tensor(values, device=device).view(-1, 1, 1)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``mu (E_bbb, W)``, ``rho (E_bbb, W)``, the others' weights ``(E - E_bbb, W)`` and the
        learnt log noise of each ``bbb`` member, ``(E_bbb,)`` (``(0,)`` without
        ``learn_noise``): views from one split (its backward one concatenation)."""
        nb, w = self.num_bbb, self.num_weights
        sizes = [nb * w, nb * w, (len(self.members) - nb) * w]
        mu, rho, theta, log_noise = params.split([*sizes, params.numel() - sum(sizes)])
        return mu.view(nb, w), rho.view(nb, w), theta.view(-1, w), log_noise

    def _losses(
        self, params: Tensor, x: Tensor, y: Tensor, eps: Tensor, scale: Tensor, kl: Tensor
    ) -> Tensor:
        """:meth:`losses` on the minibatch ``x (E, B, D + 2)``, ``y (E, B)``; the data term
        scaled by ``scale``, the KL term by ``kl`` (both ``()``)."""
        nb, p = self.num_bbb, self.num_particles
        mu, rho, theta, log_noise = self._split(params)
        sigma = nn.functional.softplus(rho)
        w = torch.addcmul(mu.unsqueeze(1), sigma.unsqueeze(1), eps)  # (E_bbb, P, W)
        xb = x[:nb].unsqueeze(1).expand(nb, p, *x.shape[1:]).reshape(nb * p, *x.shape[1:])
        # sizes spelt out, not -1: with no bbb member these are views of 0 elements
        weights = torch.cat([w.reshape(nb * p, self.num_weights), theta])
        out = self._forward(weights, torch.cat([xb, x[nb:]]))
        # bbb: mean over particles of  scale * (-log p(y | w)) + kl * (log q(w) - log p(w))
        if self.learn_noise:
            log_noise = log_noise.view(-1, 1, 1)
            noise = log_noise.exp()
        else:
            noise = self._noise
            log_noise = math.log(noise) if isinstance(noise, float) else noise.log()
        z = (y[:nb].unsqueeze(1) - out[: nb * p].view(nb, p, y.shape[1])) / noise
        nll = (0.5 * z.square() + (log_noise + _HALF_LOG_2PI)).sum(-1)
        log_prior = self._prior.log_prob(w).sum(-1)
        log_q = (-0.5 * eps.square() - _HALF_LOG_2PI).sum(-1) - sigma.log().sum(-1, keepdim=True)
        bbb = (scale * nll + kl * (log_q - log_prior)).mean(-1)
        mse = (out[nb * p :] - y[nb:]).square().mean(-1)
        return torch.cat([bbb, mse])

    def _update(
        self, rows: Tensor, eps: Tensor, scale: Tensor, rate: float | Tensor, kl: Tensor
    ) -> None:
        x, y = self._minibatch(rows)
        with torch.enable_grad():
            loss = self._losses(self.params, x, y, eps, scale, kl).sum()
            (grad,) = torch.autograd.grad(loss, self.params)
        self._adam(grad, rate)

    def _per_element(
        self, values: list[float], rho_values: list[float] | None = None
    ) -> float | Tensor:
        """Per-member values spread over the flat layout: ``values`` (one per member, in
        :attr:`members`' order) for ``mu`` and the other members' weights, ``rho_values`` (one
        per ``bbb`` member; default: the ``bbb`` members' ``values``) for ``rho``, and
        ``values`` again for the log noise under ``learn_noise``. Returns the one number where
        every element shares it, else a device tensor ``(numel of params,)``."""
        nb = self.num_bbb
        rho_values = values[:nb] if rho_values is None else rho_values
        if len(set(values + rho_values)) == 1:
            return values[0]
        per_member = torch.tensor(values[:nb] + rho_values + values[nb:])
        noise = torch.tensor(values[:nb] if self.learn_noise else [])
        spread = torch.cat([per_member.repeat_interleave(self.num_weights), noise])
        return spread.to(self.device)

    def _rate(self) -> float | Tensor:
        """Adam's rate of this step: the rate, or per element the rates, times the decay
        ``lr_final_factor ** min(t / lr_decay_steps, 1)`` after ``t`` interactions (a device
        tensor then, computed once a step)."""
        if not self._decays:
            return self._lr
        progress = (self._t / self._lr_decay_steps).clamp(max=1.0)
        return self._lr * torch.exp(self._lr_log_factor * progress)

    @torch.no_grad()
    def _adam(self, grad: Tensor, rate: float | Tensor) -> None:
        """``torch.optim.Adam``'s update (default betas and eps) at ``rate`` (:meth:`_rate`),
        on the flat vector."""
        beta1, beta2 = _BETAS
        self._adam_steps += 1
        self._adam_m.lerp_(grad, 1 - beta1)
        self._adam_v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = rate / (1 - beta1**self._adam_steps)
        bias_correction2_sqrt = (1 - beta2**self._adam_steps).sqrt()
        denom = (self._adam_v.sqrt() / bias_correction2_sqrt).add_(_ADAM_EPS)
        self.params.sub_(self._adam_m / denom * step_size)

    @torch.no_grad()
    def _step_body(self) -> None:
        """The bandit step on the device, from the static inputs ``_index``, ``_coin``: the
        function both run eagerly and captured."""
        nb, num, gen = self.num_bbb, len(self.members), self._gen
        index = self._index[self._member_seed]  # (E,)
        contexts, edible = self._contexts[index], self._edible[index]
        coin = self._coin[self._member_seed]
        # decisions: one posterior draw per bbb member (Thompson sampling), epsilon-greedy else
        mu, rho, theta, _ = self._split(self.params)
        draw = torch.randn(mu.shape, generator=gen, device=self.device)
        weights = torch.cat([torch.addcmul(mu, nn.functional.softplus(rho), draw), theta])
        both = torch.arange(NUM_ACTIONS, device=self.device).expand(num, -1)
        inputs = _network_inputs(contexts.unsqueeze(1).expand(-1, NUM_ACTIONS, -1), both)
        best = self._forward(weights, inputs).argmax(-1)
        explore = torch.rand(num - nb, generator=gen, device=self.device) < self._epsilon
        random_action = torch.randint(NUM_ACTIONS, (num - nb,), generator=gen, device=self.device)
        action = torch.cat([best[:nb], torch.where(explore, random_action, best[nb:])])
        received = reward(edible, action, coin)
        self._regret.add_(oracle_reward(edible) - received)
        self._action.copy_(action)
        self._received.copy_(received)
        # store the interaction in the ring buffer
        pos = (self._t % self.buffer_size).view(1)
        self._x.index_copy_(1, pos, _network_inputs(contexts, action).unsqueeze(1))
        self._y.index_copy_(1, pos, received.unsqueeze(1))
        self._t.add_(1)
        # the updates, their draws made at once
        size = self._t.clamp(max=self.buffer_size)
        shape = (self.num_batches, num, self.batch_size)
        rows = (torch.rand(shape, generator=gen, device=self.device) * size).long()
        rows = torch.minimum(rows, size - 1)
        eps_shape = (self.num_batches, nb, self.num_particles, self.num_weights)
        eps = torch.randn(eps_shape, generator=gen, device=self.device)
        scale, rate = self._scale(), self._rate()
        for k in range(self.num_batches):
            self._update(rows[k], eps[k], scale, rate, self._kl[k])

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Capture :meth:`_step_body` as a CUDA graph, after eager warm-up steps on a side
        stream; the state is put back as it was before the warm-up."""
        saved = self._mutable_state()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_STEPS):
                self._step_body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step_body()
        self._restore_mutable_state(saved)
        return graph

    def _mutable_state(self) -> tuple[list[Tensor], Tensor]:
        """Copies of every tensor a step writes, and the generator's state."""
        return [t.detach().clone() for t in self._written()], self._gen.get_state()

    def _restore_mutable_state(self, saved: tuple[list[Tensor], Tensor]) -> None:
        tensors, rng = saved
        with torch.no_grad():
            for mine, copy in zip(self._written(), tensors, strict=True):
                mine.copy_(copy)
        self._gen.set_state(rng)

    def _written(self) -> list[Tensor]:
        return [
            self.params, self._adam_m, self._adam_v, self._adam_steps, self._x, self._y,
            self._t, self._regret, self._action, self._received,
        ]  # fmt: skip


def _network_inputs(contexts: Tensor, actions: Tensor) -> Tensor:
    """:func:`~pyro_dwp.experiments.bandits.network_inputs` without a host sync (``one_hot``
    checks its input's range on the CPU): ``(..., D)``, int ``(...)`` -> ``(..., D + 2)``."""
    onehot = actions.unsqueeze(-1) == torch.arange(NUM_ACTIONS, device=actions.device)
    return torch.cat([contexts, onehot.to(contexts.dtype)], dim=-1)


def _agent_settings(
    agents: Sequence[str],
    overrides: Mapping[str, Mapping[str, float | str]],
    base: dict[str, float | str],
) -> dict[str, dict[str, Any]]:
    """Each agent's settings: ``base`` with its ``overrides`` applied, checked.

    Raises:
        ValueError: For an override of an agent not in ``agents``, a setting an agent does not
            have (:data:`BBB_SETTINGS` for ``bbb`` agents, :data:`RATE_SETTINGS` for the
            others) or a bad value, naming them.
    """
    unknown = sorted(set(overrides) - set(agents))
    if unknown:
        raise ValueError(f"overrides: agents {unknown} are not among the agents {list(agents)}")
    out = {}
    for agent in agents:
        allowed = BBB_SETTINGS if agent_epsilon(agent) is None else RATE_SETTINGS
        given = dict(overrides.get(agent, {}))
        extra = sorted(set(given) - set(allowed))
        if extra:
            raise ValueError(
                f"overrides: agent {agent!r} has no setting {extra}; it takes {list(allowed)}"
            )
        settings = base | {k: v if k == "kl_size" else float(v) for k, v in given.items()}
        try:
            _check_values(**settings)
        except ValueError as e:
            raise ValueError(f"overrides of agent {agent!r}: {e}") from None
        out[agent] = settings
    return out


def _check_values(**values: Any) -> None:
    """Raise ``ValueError`` naming the first bad value of :data:`BBB_SETTINGS`."""
    check_kl_size(values["kl_size"])
    for name in (n for n in BBB_SETTINGS if n not in ("pi", "kl_size", "lr_decay_steps")):
        if not values[name] > 0:
            raise ValueError(f"{name} must be > 0, got {values[name]}")
    if not values["lr_decay_steps"] >= 1:
        raise ValueError(f"lr_decay_steps must be >= 1, got {values['lr_decay_steps']}")
    if not 0 < values["pi"] < 1:
        raise ValueError(f"pi must be in (0, 1), got {values['pi']}")


def _check_options(
    *,
    agents: Sequence[str],
    seeds: Sequence[int],
    hidden: Sequence[int],
    stream_chunk: int,
    **values: Any,
) -> None:
    """Raise ``ValueError`` naming the first bad option."""
    if not agents:
        raise ValueError("agents: name at least one agent")
    if len(set(agents)) != len(agents):
        raise ValueError(f"agents: an agent is named twice: {list(agents)}")
    for name in agents:
        agent_epsilon(name)
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: a seed is given twice: {list(seeds)}")
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"hidden: layer sizes must be >= 1, got {list(hidden)}")
    for name in ("buffer_size", "batch_size", "num_batches", "num_particles"):
        if values[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {values[name]}")
    if stream_chunk < 1:
        raise ValueError(f"stream_chunk must be >= 1, got {stream_chunk}")
    _check_values(**{k: values[k] for k in BBB_SETTINGS})
