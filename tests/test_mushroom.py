"""Tests of the Mushroom bandit: data encoding, rewards and regret, agents, the job's resume.

The real-data tests read ``../shared/data/mushroom/agaricus-lepiota.data`` (beside the
repository) and are skipped if it is absent; the others use hand-made rows.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pyro
import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

from pyro_dwp.cli import main as cli_main
from pyro_dwp.data import DATA_ENV_VAR
from pyro_dwp.data.mushroom import (
    MUSHROOM_CONTEXT_DIM,
    UCI_MUSHROOM_ROWS,
    encode_mushrooms,
    find_mushroom_file,
    load_mushroom,
)
from pyro_dwp.experiments import mushroom
from pyro_dwp.experiments.bandits import (
    EAT,
    PASS,
    GreedyAgent,
    MushroomBandit,
    RegretLog,
    ReplayBuffer,
    ThompsonBBBAgent,
    expected_reward,
    oracle_reward,
    reward,
)
from pyro_dwp.experiments.mushroom import bbb_variants

REAL_FILE = SHARED_DATA / "mushroom" / "agaricus-lepiota.data"
needs_real = needs_shared_data("mushroom/agaricus-lepiota.data")

EDIBLE_ROW = "e,x,s,y,t,a,f,c,b,k,e,c,s,s,w,w,p,w,o,p,n,n,g"
POISONOUS_ROW = "p,x,s,n,t,p,f,c,n,k,e,e,s,s,w,w,p,w,o,p,k,s,u"
MISSING_ROOT_ROW = "p,x,y,n,f,f,f,c,n,b,t,?,s,s,p,w,p,w,o,e,w,v,l"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder whose mushroom file holds 60 hand-made rows (half edible)."""
    rows = [EDIBLE_ROW, POISONOUS_ROW, MISSING_ROOT_ROW, EDIBLE_ROW.replace(",g", ",d")] * 15
    (tmp_path / "mushroom").mkdir()
    (tmp_path / "mushroom" / "agaricus-lepiota.data").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_encoding_shape_and_missing_value():
    contexts, edible = encode_mushrooms([EDIBLE_ROW, MISSING_ROOT_ROW, ""])
    assert contexts.shape == (2, MUSHROOM_CONTEXT_DIM) == (2, 126)
    assert edible.tolist() == [True, False]
    assert (contexts.sum(1) == 22).all()
    # stalk-root is attribute 11, its '?' the last of "bcuezr?": column 54 + 6 = 60
    stalk_root = slice(54, 61)
    assert contexts[1, stalk_root].tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert contexts[0, stalk_root].tolist() == [0, 1, 0, 0, 0, 0, 0]  # 'c', club


@needs_real
def test_real_file():
    contexts, edible = load_mushroom(SHARED_DATA)
    assert contexts.shape == (8124, 126)
    assert int(edible.sum()) == 4208
    assert int((contexts.sum(0) > 0).sum()) == 117  # the width of an observed-values encoding
    assert int(contexts[:, 60].sum()) == 2480  # missing stalk-root


def test_missing_file_names_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(FileNotFoundError, match="mushroom/agaricus-lepiota.data not found"):
        load_mushroom(tmp_path)
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=DATA_ENV_VAR):
        find_mushroom_file()
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"environment variable {DATA_ENV_VAR}"):
        find_mushroom_file()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (EDIBLE_ROW[:-2], "expected 23 comma-separated fields"),
        ("x" + EDIBLE_ROW[1:], "the class must be 'e' or 'p'"),
        ("e,q" + EDIBLE_ROW[3:], "attribute cap-shape has the value 'q'"),
    ],
)
def test_malformed_file_names_file_and_line(data_dir: Path, bad: str, message: str):
    path = data_dir / "mushroom" / "agaricus-lepiota.data"
    lines = path.read_text().splitlines()
    lines[6] = bad
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{path}, line 7: {message}"):
        load_mushroom(data_dir)


def test_rewards_and_oracle():
    edible = torch.tensor([True, True, False, False, False, False])
    action = torch.tensor([EAT, PASS, EAT, EAT, PASS, PASS])
    coin = torch.tensor([True, False, True, False, True, False])
    assert reward(edible, action, coin).tolist() == [5, 0, -35, 5, 0, 0]
    assert expected_reward(edible, action).tolist() == [5, 0, -15, -15, 0, 0]
    assert oracle_reward(edible).tolist() == [5, 5, 0, 0, 0, 0]


def test_seeded_stream_and_coin():
    contexts, edible = encode_mushrooms([EDIBLE_ROW, POISONOUS_ROW])
    streams = []
    for _ in range(2):
        env = MushroomBandit(contexts, edible, seed=3)
        seen = []
        for _ in range(200):
            env.observe()
            seen.append((env.index, env.coin, env.reward(EAT), env.reward(PASS)))
        streams.append(seen)
    assert streams[0] == streams[1]
    poisonous_meals = [r for i, _, r, _ in streams[0] if i == 1]
    assert set(poisonous_meals) == {-35.0, 5.0}  # both sides of the coin
    assert all((r == -35.0) == coin for i, coin, r, _ in streams[0] if i == 1)
    assert all(r == 5.0 for i, _, r, _ in streams[0] if i == 0)
    assert all(p == 0.0 for *_, p in streams[0])
    other = MushroomBandit(contexts, edible, seed=4)
    assert [(other.observe(), other.index)[1] for _ in range(200)] != [s[0] for s in streams[0]]


def test_regret_log():
    log = RegretLog(every=2)
    for oracle, received in [(5, 5), (5, 0), (0, -35), (0, 5), (0, 0)]:
        log.add(oracle, received)
    assert log.total == 5 + 35 - 5
    assert log.steps == 5
    assert log.curve == [5.0, 35.0]
    restored = RegretLog()
    restored.load_state_dict(log.state_dict())
    assert restored.state_dict() == log.state_dict()


def test_agent_told_the_labels_has_zero_regret():
    contexts, edible = encode_mushrooms([EDIBLE_ROW, POISONOUS_ROW, MISSING_ROOT_ROW])
    env, log = MushroomBandit(contexts, edible, seed=0), RegretLog()
    for _ in range(300):
        env.observe()
        log.add(env.oracle_reward(), env.reward(env.oracle_action()))
    assert log.total == 0.0 and log.curve == [0.0, 0.0, 0.0]


def test_buffer_keeps_the_last_interactions():
    buffer = ReplayBuffer(3, 2, seed=0)
    for i in range(5):
        buffer.add(torch.tensor([float(i), 0.0]), i % 2, float(i))
    assert len(buffer) == 3 and buffer.seen == 5
    assert sorted(buffer.y[:, 0].tolist()) == [2.0, 3.0, 4.0]
    state = buffer.state_dict()
    restored = ReplayBuffer(3, 2, seed=1)
    restored.load_state_dict(state)
    assert restored.seen == 5
    del state["seen"]  # a state written before the count was kept: the size stands in for it
    restored.load_state_dict(state)
    assert restored.seen == 3
    x, y = buffer.sample(16)
    assert x.shape == (16, 4) and y.shape == (16, 1)
    assert torch.equal(x[:, 0], y[:, 0])  # each row's context and reward travel together


@pytest.mark.parametrize(
    ("kl_size", "interactions", "size"),
    [("buffer", 6, 4), ("buffer", 2, 2), ("seen", 6, 6), ("capacity", 2, 4), ("capacity", 6, 4)],
)
def test_the_bbb_agents_kl_is_weighted_by_the_buffer_everything_seen_or_its_capacity(
    kl_size, interactions, size
):
    # a buffer of capacity 4: N is what it holds (at most 4), every interaction so far, or 4
    # from the first interaction on
    agent = ThompsonBBBAgent(3, hidden=(4,), buffer_size=4, num_batches=1, kl_size=kl_size)
    for i in range(interactions):
        agent.learn(torch.eye(3)[i % 3], i % 2, 5.0)
    assert agent.likelihood.dataset_size == size
    state = agent.state_dict()
    other = ThompsonBBBAgent(3, hidden=(4,), buffer_size=4, num_batches=1, kl_size=kl_size)
    other.load_state_dict(state)
    assert other.likelihood.dataset_size == size
    with pytest.raises(ValueError, match="kl_size must be one of"):
        ThompsonBBBAgent(3, kl_size="window")


def _run(env: MushroomBandit, agent: GreedyAgent | ThompsonBBBAgent, steps: int) -> float:
    log = RegretLog()
    for _ in range(steps):
        context = env.observe()
        action = agent.act(context)
        received = env.reward(action)
        log.add(env.oracle_reward(), received)
        agent.learn(context, action, received)
    return log.total


@needs_real
def test_bbb_beats_a_uniformly_random_agent(one_thread):
    contexts, edible = load_mushroom(SHARED_DATA)
    steps = 300
    env = MushroomBandit(contexts, edible, seed=0)
    coins, log = torch.Generator().manual_seed(1), RegretLog()
    for _ in range(steps):
        env.observe()
        log.add(env.oracle_reward(), env.reward(int(torch.randint(2, (), generator=coins))))
    agent = ThompsonBBBAgent(contexts.shape[1], hidden=(50, 50), num_batches=2, lr=1e-2)
    bbb = _run(MushroomBandit(contexts, edible, seed=0), agent, steps)
    assert log.total > 1000  # about 4.9 per step
    assert bbb < 0.8 * log.total  # 710 against 1,145


def _job(out: Path, data_dir: Path, *extra: str) -> int:
    return cli_main(
        [
            "mushroom",
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
            "--agents",
            "bbb",
            "greedy",
            "eps0.05",
            "--hidden",
            "16",
            "--buffer-size",
            "32",
            "--batch-size",
            "8",
            "--num-batches",
            "2",
            "--checkpoint-every",
            "20",
            "--no-progress",
            *extra,
        ]
    )


def _final_state(out: Path) -> tuple[dict, dict]:
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    return json.loads((out / "regret.json").read_text()), state


def test_resume_equals_an_uninterrupted_run(tmp_path: Path, data_dir: Path, one_thread):
    assert _job(tmp_path / "a", data_dir, "--steps", "200") == 0
    assert _job(tmp_path / "b", data_dir, "--steps", "120") == 0
    assert _job(tmp_path / "b", data_dir, "--steps", "200", "--resume") == 0
    (ra, sa), (rb, sb) = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert ra["regret"] == rb["regret"] and ra["curves"] == rb["curves"]
    assert len(ra["curves"]["bbb"]) == 2
    for name in ("bbb", "greedy", "eps0.05"):
        assert sa["agents"][name]["buffer"]["y"].equal(sb["agents"][name]["buffer"]["y"])
    pa, pb = sa["agents"]["bbb"]["params"]["params"], sb["agents"]["bbb"]["params"]["params"]
    assert pa.keys() == pb.keys() and all(pa[k].equal(pb[k]) for k in pa)
    ga, gb = sa["agents"]["greedy"]["net"], sb["agents"]["greedy"]["net"]
    assert all(ga[k].equal(gb[k]) for k in ga)
    assert (tmp_path / "a" / "regret.png").is_file()
    assert "| bbb |" in (tmp_path / "a" / "regret.md").read_text()


def test_a_file_of_other_length_than_the_uci_one_is_named(tmp_path: Path, data_dir: Path, capsys):
    """A file cut at a line boundary parses; the job says that it is not the UCI file (stderr,
    ``regret.json``'s ``data_rows``, ``regret.md``), as it does not for the full file."""
    assert _job(tmp_path / "a", data_dir, "--steps", "100") == 0
    assert "holds 60 rows, the UCI file 8,124: a cut or another file" in capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "regret.json").read_text())["data_rows"] == 60
    assert (
        "NOT the UCI data: the mushroom file held 60 rows"
        in (tmp_path / "a" / "regret.md").read_text()
    )
    rows = (data_dir / "mushroom" / "agaricus-lepiota.data").read_text().splitlines()
    full = (rows * 136)[:UCI_MUSHROOM_ROWS]  # as many rows as the UCI file
    (data_dir / "mushroom" / "agaricus-lepiota.data").write_text("\n".join(full) + "\n")
    assert _job(tmp_path / "b", data_dir, "--steps", "100") == 0
    assert "rows, the UCI file" not in capsys.readouterr().err
    assert "NOT the UCI data" not in (tmp_path / "b" / "regret.md").read_text()


def test_an_agent_runs_the_same_alone(tmp_path: Path, data_dir: Path):
    assert _job(tmp_path / "all", data_dir, "--steps", "100") == 0
    argv = ["--steps", "100", "--agents", "eps0.05"]
    assert _job(tmp_path / "one", data_dir, *argv) == 0
    alone = json.loads((tmp_path / "one" / "regret.json").read_text())["regret"]
    together = json.loads((tmp_path / "all" / "regret.json").read_text())["regret"]
    assert alone == {"eps0.05": together["eps0.05"]}


def test_resume_to_fewer_steps_than_done_says_so(tmp_path: Path, data_dir: Path, capsys):
    assert _job(tmp_path, data_dir, "--steps", "40") == 0
    capsys.readouterr()
    assert _job(tmp_path, data_dir, "--steps", "20", "--resume") == 0
    assert "the run already has 40 steps, more than --steps 20" in capsys.readouterr().err
    assert json.loads((tmp_path / "regret.json").read_text())["steps"] == 40


def test_resume_without_a_checkpoint_says_it_starts_afresh(tmp_path: Path, data_dir: Path, capsys):
    assert _job(tmp_path / "fresh", data_dir, "--steps", "20") == 0
    assert "training starts afresh" not in capsys.readouterr().err
    assert _job(tmp_path / "new", data_dir, "--steps", "20", "--resume") == 0
    assert f"--resume: no checkpoint at {tmp_path / 'new' / 'checkpoint.pt'}" in (
        capsys.readouterr().err
    )
    fresh, new = (json.loads((tmp_path / d / "regret.json").read_text()) for d in ("fresh", "new"))
    assert new["regret"] == fresh["regret"]


@pytest.mark.parametrize("engine", ["pyro", "lockstep"])
def test_agents_gone_non_finite_stop_the_run_before_their_checkpoint(
    tmp_path: Path, data_dir: Path, capsys, engine: str
):
    # A rate of 1e30 overflows the greedy agents' networks; their results are never written.
    argv = ("--steps", "40", "--engine", engine, "--lr", "1e30", "--agents", "greedy", "eps0.05")
    assert _job(tmp_path, data_dir, *argv) == 1
    err = capsys.readouterr().err
    assert "is NaN or infinite at step 20" in err and "no checkpoint was written" in err
    assert not (tmp_path / "regret.json").exists() and not (tmp_path / "checkpoint.pt").exists()


def test_resume_refuses_other_settings(tmp_path: Path, data_dir: Path, capsys):
    assert _job(tmp_path, data_dir, "--steps", "20") == 0
    assert _job(tmp_path, data_dir, "--steps", "40", "--resume", "--lr", "0.01") == 1
    assert "--lr: 0.001 -> 0.01" in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_of_the_old_format_naming_it(
    tmp_path: Path, data_dir: Path, capsys
):
    assert _job(tmp_path, data_dir, "--steps", "20") == 0
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    old = {"version": 1, "step": state["epoch"], "settings": {}, "env": state["env"]}
    torch.save(old, path)  # the mushroom job's own format before the one Checkpoint
    assert _job(tmp_path, data_dir, "--steps", "40", "--resume") == 1
    err = capsys.readouterr().err
    assert f"{path} is not a pyro_dwp training checkpoint" in err
    assert "run without --resume to start afresh" in err


def test_bad_agent_name():
    with pytest.raises(SystemExit):
        cli_main(["mushroom", "--out", "x", "--agents", "eps2"])


def _synthetic_bandit(seed: int = 0) -> MushroomBandit:
    g = torch.Generator().manual_seed(3)
    contexts = torch.nn.functional.one_hot(torch.randint(6, (40,), generator=g), 6).float()
    return MushroomBandit(contexts, torch.rand(40, generator=g) < 0.5, seed=seed)


def _bbb_run(engine: str, steps: int, kl_scheme: str = "uniform") -> tuple[float, ThompsonBBBAgent]:
    import pyro

    pyro.set_rng_seed(0)
    agent = ThompsonBBBAgent(
        6, hidden=(8,), buffer_size=16, batch_size=4, num_batches=2, lr=1e-2, engine=engine,
        kl_scheme=kl_scheme,
    )  # fmt: skip
    return _run(_synthetic_bandit(), agent, steps), agent


@pytest.mark.parametrize("kl_scheme", ["uniform", "blundell"])
def test_the_compiled_bbb_agent_equals_pyros(kl_scheme, one_thread):
    # 30 steps: the buffer (and the likelihood's dataset size, read at every step) grows to its
    # cap of 16; the same decisions, regret and buffer, parameters equal to float rounding
    # (60 Adam steps of 1e-2 from the same start: differences below 1e-5); under "blundell" the
    # compiled step's KL factor against Pyro's KLScaleMessenger on model and guide
    regret_pyro, pyro_agent = _bbb_run("pyro", 30, kl_scheme)
    params_pyro = {k: v.clone() for k, v in pyro_agent.state_dict()["params"]["params"].items()}
    regret_compiled, compiled_agent = _bbb_run("compiled", 30, kl_scheme)
    assert compiled_agent._compiled is not None  # it did compile
    assert regret_compiled == regret_pyro
    assert compiled_agent.buffer.y.equal(pyro_agent.buffer.y)
    params = compiled_agent.state_dict()["params"]["params"]
    assert params.keys() == params_pyro.keys()
    for k in params:
        torch.testing.assert_close(params[k], params_pyro[k], rtol=1e-4, atol=1e-5)


def test_blundells_kl_factors_go_to_the_updates_of_a_step_in_order(monkeypatch):
    # K = 3 updates a step: K * 2^-k / (1 - 2^-K) = 12/7, 6/7, 3/7 (summing to K), every step
    agent = ThompsonBBBAgent(3, hidden=(4,), buffer_size=4, num_batches=3, kl_scheme="blundell")
    factors: list[float] = []
    step = agent._step
    monkeypatch.setattr(agent, "_step", lambda x, y, f: factors.append(f) or step(x, y, f))
    for i in range(2):
        agent.learn(torch.eye(3)[i], i % 2, 5.0)
    assert factors == pytest.approx([12 / 7, 6 / 7, 3 / 7] * 2, rel=1e-12)
    uniform = ThompsonBBBAgent(3, hidden=(4,), buffer_size=4, num_batches=3)
    assert uniform._kl_factors == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown KL scheme 'graves'"):
        ThompsonBBBAgent(3, kl_scheme="graves")


def test_an_unknown_bandit_engine_is_refused():
    with pytest.raises(ValueError, match="engine must be 'pyro' or 'compiled'"):
        ThompsonBBBAgent(6, engine="jit")


def test_the_job_resumes_a_pyro_run_on_the_compiled_engine(tmp_path: Path, data_dir: Path):
    assert _job(tmp_path, data_dir, "--steps", "20", "--engine", "pyro") == 0
    assert _job(tmp_path, data_dir, "--steps", "40", "--resume", "--engine", "compiled") == 0
    regret = json.loads((tmp_path / "regret.json").read_text())
    assert regret["steps"] == 40 and set(regret["regret"]) == {"bbb", "greedy", "eps0.05"}


def test_the_lockstep_job_resumes_as_an_uninterrupted_run(tmp_path: Path, data_dir: Path):
    lockstep = ("--engine", "lockstep")
    assert _job(tmp_path / "a", data_dir, *lockstep, "--steps", "200") == 0
    assert _job(tmp_path / "b", data_dir, *lockstep, "--steps", "130") == 0
    before = _final_state(tmp_path / "b")[1]["step_seconds"]
    assert _job(tmp_path / "b", data_dir, *lockstep, "--steps", "200", "--resume") == 0
    (ra, sa), (rb, sb) = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    # the seconds spent stepping add up over the invocations of the resumed run
    assert rb["step_seconds"] >= sb["step_seconds"] > before > 0
    assert ra["regret"] == rb["regret"] and ra["curves"] == rb["curves"]
    assert len(ra["curves"]["bbb"]) == 2 and ra["seed"] == 0 and ra["seeds"] == [0]
    for key in ("params", "buffer_y", "regret", "adam_v"):
        assert sa["runner"][key].equal(sb["runner"][key])
    assert "| bbb |" in (tmp_path / "a" / "regret.md").read_text()


def test_the_kl_size_option_is_a_setting_only_when_not_the_default(
    tmp_path: Path, data_dir: Path, capsys
):
    lockstep = ("--engine", "lockstep", "--steps", "20")
    assert _job(tmp_path / "a", data_dir, *lockstep) == 0
    settings = json.loads((tmp_path / "a" / "regret.json").read_text())["settings"]
    assert "kl_size" not in settings  # so runs from before the option resume under the default
    assert _job(tmp_path / "b", data_dir, *lockstep, "--kl-size", "seen") == 0
    assert json.loads((tmp_path / "b" / "regret.json").read_text())["settings"]["kl_size"] == "seen"
    # a run of one weighting does not resume under the other
    assert _job(tmp_path / "b", data_dir, *lockstep, "--steps", "30", "--resume") == 1
    assert "--kl-size: 'seen' -> '(absent)'" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["compiled", "lockstep"])
def test_the_kl_scheme_option_is_a_setting_only_when_not_the_default(
    tmp_path: Path, data_dir: Path, capsys, engine
):
    options = ("--engine", engine, "--steps", "20")
    assert _job(tmp_path / "a", data_dir, *options) == 0
    assert "kl_scheme" not in json.loads((tmp_path / "a" / "regret.json").read_text())["settings"]
    assert _job(tmp_path / "b", data_dir, *options, "--kl-scheme", "blundell") == 0
    b = json.loads((tmp_path / "b" / "regret.json").read_text())
    assert b["settings"]["kl_scheme"] == "blundell"
    a = json.loads((tmp_path / "a" / "regret.json").read_text())
    assert b["curves"]["greedy"] == a["curves"]["greedy"]  # the same stream and greedy agent
    assert _job(tmp_path / "b", data_dir, *options, "--steps", "30", "--resume") == 1
    assert "--kl-scheme: 'blundell' -> '(absent)'" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["compiled", "lockstep"])
def test_the_scale_lr_factor_is_a_setting_only_when_not_the_default(
    tmp_path: Path, data_dir: Path, capsys, engine
):
    options = ("--engine", engine, "--steps", "20", "--agents", "bbb")
    assert _job(tmp_path / "a", data_dir, *options) == 0
    a = json.loads((tmp_path / "a" / "regret.json").read_text())
    assert "scale_lr_factor" not in a["settings"]  # runs from before the option resume
    assert _job(tmp_path / "b", data_dir, *options, "--scale-lr-factor", "0.1") == 0
    b = json.loads((tmp_path / "b" / "regret.json").read_text())
    assert b["settings"]["scale_lr_factor"] == 0.1
    assert _job(tmp_path / "b", data_dir, *options, "--steps", "30", "--resume") == 1
    assert "--scale-lr-factor: 0.1 -> '(absent)'" in capsys.readouterr().err
    assert _job(tmp_path / "c", data_dir, *options, "--scale-lr-factor", "0") == 1
    assert "--scale-lr-factor must be > 0, got 0.0" in capsys.readouterr().err


def test_the_tuned_preset_runs_as_its_flags_spelled_out(tmp_path: Path, data_dir: Path):
    spelled = ("--engine", "lockstep", "--kl-size", "capacity", "--lr-final-factor", "0.01")
    spelled += ("--lr-decay-steps", "3000", "--scale-lr-factor", "0.1")
    short = ("--steps", "20", "--agents", "bbb", "greedy")
    assert _job(tmp_path / "a", data_dir, "--preset", "tuned", *short) == 0
    assert _job(tmp_path / "b", data_dir, "--preset", "paper", *spelled, *short) == 0
    a = json.loads((tmp_path / "a" / "regret.json").read_text())
    b = json.loads((tmp_path / "b" / "regret.json").read_text())
    assert a["curves"] == b["curves"] and a["regret"] == b["regret"]
    assert a["settings"] == {**b["settings"], "preset": "tuned"}
    assert a["settings"]["kl_size"] == "capacity" and a["settings"]["lr_decay_steps"] == 3000


def test_a_preset_fills_only_the_options_left_unset():
    parser = argparse.ArgumentParser()
    mushroom.add_arguments(parser)
    quick = parser.parse_args(["--out", "x"])
    mushroom.apply_preset(quick)
    assert (quick.steps, quick.num_batches, quick.engine, quick.kl_size) == (
        2000, 4, "compiled", "buffer"
    )  # fmt: skip
    assert (quick.lr_final_factor, quick.lr_decay_steps, quick.scale_lr_factor) == (1, 10_000, 1)
    tuned = parser.parse_args(["--out", "x", "--preset", "tuned", "--lr-decay-steps", "500"])
    mushroom.apply_preset(tuned)
    assert (tuned.steps, tuned.num_batches, tuned.engine, tuned.kl_size) == (
        50_000, 64, "lockstep", "capacity"
    )  # fmt: skip
    assert (tuned.lr_final_factor, tuned.lr_decay_steps, tuned.scale_lr_factor) == (0.01, 500, 0.1)


def test_the_tuned_preset_under_another_engine_names_the_preset(
    tmp_path: Path, data_dir: Path, capsys
):
    assert _job(tmp_path, data_dir, "--preset", "tuned", "--engine", "compiled") == 1
    err = capsys.readouterr().err
    assert "--lr-final-factor 0.01 (--preset tuned) needs --engine lockstep" in err
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("engine", ["pyro", "compiled"])
def test_the_bbb_agents_scales_learn_at_their_own_rate(engine, one_thread):
    # Adam's first update moves a parameter by its rate times g / (|g| + 1e-8): by about the
    # rate wherever the gradient is not tiny; the locations at lr, the scales at 0.1 lr
    agent = ThompsonBBBAgent(
        6, hidden=(8,), buffer_size=16, batch_size=4, num_batches=1, lr=1e-2,
        scale_lr_factor=0.1, engine=engine,
    )  # fmt: skip

    def unconstrained() -> dict[str, torch.Tensor]:
        store = pyro.get_param_store().get_state()["params"]
        return {k: v.detach().clone() for k, v in store.items()}

    before = unconstrained()
    agent.learn(torch.eye(6)[0], 1, 5.0)
    after = unconstrained()
    for name, value in before.items():
        moved = float((after[name] - value).abs().max())
        rate = 1e-3 if ".scales." in name else 1e-2
        assert moved == pytest.approx(rate, rel=1e-3), name


def test_the_lockstep_job_learns_the_noise_and_resumes_as_an_uninterrupted_run(
    tmp_path: Path, data_dir: Path
):
    # a variant with a learning rate of its own: the per-element rates cover the noises too
    options = ("--engine", "lockstep", "--learn-noise", "--noise", "2", "--seeds", "0", "1")
    options += ("--bbb-variant", "slow", "lr=1e-4")
    assert _job(tmp_path / "a", data_dir, *options, "--steps", "60") == 0
    assert _job(tmp_path / "b", data_dir, *options, "--steps", "40") == 0
    assert _job(tmp_path / "b", data_dir, *options, "--steps", "60", "--resume") == 0
    (ra, sa), (rb, sb) = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert ra["regret"] == rb["regret"] and sa["runner"]["params"].equal(sb["runner"]["params"])
    assert ra["settings"]["learn_noise"] is True
    members = sa["runner"]["members"]
    bbb = [m for m in members if m[0].startswith("bbb")]
    log_noise = sa["runner"]["params"][-len(bbb) :]  # the last entries: one per bbb member
    assert len(bbb) == 4 and not torch.isclose(log_noise, torch.tensor(math.log(2.0))).any()
    # the slow variant's noise moved less from its start than the default's (lr 1e-4 vs 1e-3)
    moved = (log_noise - math.log(2.0)).abs()
    assert moved[members.index(("bbb:slow", 0))] < moved[members.index(("bbb", 0))]


def test_the_lockstep_job_runs_several_seeds_in_one_process(tmp_path: Path, data_dir: Path):
    argv = ("--engine", "lockstep", "--steps", "100", "--seeds", "0", "3")
    assert _job(tmp_path, data_dir, *argv) == 0
    result = json.loads((tmp_path / "regret.json").read_text())
    assert result["seeds"] == [0, 3] and "seed" not in result
    assert result["per_seed"].keys() == {"0", "3"}
    for agent in ("bbb", "greedy", "eps0.05"):
        per_seed = [result["per_seed"][s][agent] for s in ("0", "3")]
        assert result["regret"][agent] == sum(per_seed) / 2
        curves = [result["per_seed_curves"][s][agent][-1] for s in ("0", "3")]
        assert curves == per_seed and result["curves"][agent] == [sum(per_seed) / 2]
    assert result["settings"]["seeds"] == [0, 3] and "seed" not in result["settings"]
    assert "mean over seeds 0, 3" in (tmp_path / "regret.md").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--seeds", "0", "1"), "--seeds with several seeds needs --engine lockstep"),
        (("--seeds", "2", "2", "--engine", "lockstep"), "--seeds names a seed twice"),
        (("--lr-final-factor", "0.1"), "--lr-final-factor 0.1 needs --engine lockstep"),
        (("--engine", "lockstep", "--lr-final-factor", "0"), "--lr-final-factor must be > 0"),
        (("--engine", "lockstep", "--lr-decay-steps", "0"), "--lr-decay-steps must be >= 1"),
    ],
)
def test_lockstep_options_are_checked(tmp_path: Path, data_dir: Path, capsys, extra, message):
    assert _job(tmp_path, data_dir, "--steps", "20", *extra) == 1
    assert message in capsys.readouterr().err


def test_the_decaying_rate_resumes_as_an_uninterrupted_run(tmp_path: Path, data_dir: Path):
    # the rate's decay follows the interactions so far, which the checkpoint carries; the
    # options are settings of the run only when not at their defaults
    decay = ("--engine", "lockstep", "--lr-final-factor", "0.1", "--lr-decay-steps", "50")
    assert _job(tmp_path / "a", data_dir, *decay, "--steps", "60") == 0
    assert _job(tmp_path / "b", data_dir, *decay, "--steps", "40") == 0
    assert _job(tmp_path / "b", data_dir, *decay, "--steps", "60", "--resume") == 0
    (ra, sa), (rb, sb) = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert ra["regret"] == rb["regret"] and sa["runner"]["params"].equal(sb["runner"]["params"])
    assert ra["settings"]["lr_final_factor"] == 0.1 and ra["settings"]["lr_decay_steps"] == 50
    assert _job(tmp_path / "c", data_dir, "--engine", "lockstep", "--steps", "60") == 0
    rc, sc = _final_state(tmp_path / "c")
    assert "lr_final_factor" not in rc["settings"] and "lr_decay_steps" not in rc["settings"]
    assert not sc["runner"]["params"].equal(sa["runner"]["params"])  # the decay took effect


def test_the_engines_refuse_each_others_checkpoints(tmp_path: Path, data_dir: Path, capsys):
    assert _job(tmp_path / "pyro", data_dir, "--steps", "20") == 0
    argv = ("--steps", "40", "--resume", "--engine", "lockstep")
    assert _job(tmp_path / "pyro", data_dir, *argv) == 1
    assert "was written by --engine pyro or compiled" in capsys.readouterr().err
    assert _job(tmp_path / "lockstep", data_dir, "--steps", "20", "--engine", "lockstep") == 0
    assert _job(tmp_path / "lockstep", data_dir, "--steps", "40", "--resume") == 1
    assert "was written by --engine lockstep" in capsys.readouterr().err


def test_bbb_variants_become_the_lockstep_engines_overrides():
    specs = [["narrow", "neg-log-sigma1=3", "pi=0.25"], ["slow", "lr=1e-4", "init-scale=0.001"]]
    specs += [["seen", "kl-size=seen", "scale-lr-factor=0.1"], ["late", "lr-final-factor=0.03"]]
    specs += [["short", "lr-decay-steps=5000"]]
    assert bbb_variants(specs) == {
        "bbb:narrow": {"sigma1": math.exp(-3), "pi": 0.25},
        "bbb:slow": {"lr": 1e-4, "init_scale": 0.001},
        "bbb:seen": {"kl_size": "seen", "scale_lr_factor": 0.1},
        "bbb:late": {"lr_final_factor": 0.03},
        "bbb:short": {"lr_decay_steps": 5000.0},
    }
    assert bbb_variants([["plain"]]) == {"bbb:plain": {}}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([["lr=1e-4"]], "each needs a label of its own first"),
        ([["a"], ["a", "pi=0.3"]], "each needs a label of its own first"),
        (
            [["a", "sigma1=0.3"]],
            "'sigma1=0.3' is not KEY=VALUE with KEY one of lr, lr-final-factor, lr-decay-steps, pi",
        ),
        ([["a", "noise"]], "'noise' is not KEY=VALUE"),
        ([["a", "noise=big"]], "noise must be a number, got 'big'"),
        ([["a", "pi=0.3", "pi=0.2"]], "pi is given twice"),
        ([["a", "neg-log-sigma2=800"]], "neg-log-sigma2 800.0: sigma = exp"),
        ([["a", "kl-size=all"]], "kl-size must be one of buffer, seen, capacity, got 'all'"),
    ],
)
def test_bad_bbb_variants_are_refused_naming_them(specs, message):
    with pytest.raises(ValueError, match=message):
        bbb_variants(specs)


def test_the_job_runs_bbb_variants_beside_the_agents(tmp_path: Path, data_dir: Path, capsys):
    variant = ("--bbb-variant", "narrow", "neg-log-sigma1=3", "lr=0.01")
    argv = ("--engine", "lockstep", "--steps", "100", "--seeds", "0", "1", *variant)
    assert _job(tmp_path / "a", data_dir, *argv) == 0
    result = json.loads((tmp_path / "a" / "regret.json").read_text())
    assert set(result["regret"]) == {"bbb", "greedy", "eps0.05", "bbb:narrow"}
    assert set(result["per_seed"]["1"]) == set(result["regret"])
    assert result["settings"]["bbb_variant"] == [["narrow", "neg-log-sigma1=3", "lr=0.01"]]
    assert "| bbb:narrow |" in (tmp_path / "a" / "regret.md").read_text()
    # the engines of one agent object each do not take variants
    assert _job(tmp_path / "b", data_dir, "--steps", "5", *variant) == 1
    err = capsys.readouterr().err
    assert "--bbb-variant needs --engine lockstep, got --engine compiled" in err
    assert _job(tmp_path / "b", data_dir, "--steps", "5", "--agents", "bbb:x") == 1
    err = capsys.readouterr().err
    assert "--agents bbb:x needs --engine lockstep, got --engine compiled" in err
    # a value the engine refuses is named with its agent
    bad = ("--bbb-variant", "wide", "pi=1.5")
    assert _job(tmp_path / "c", data_dir, "--engine", "lockstep", "--steps", "5", *bad) == 1
    assert "overrides of agent 'bbb:wide': pi must be in (0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["compiled", "lockstep"])
def test_max_minutes_stops_at_a_checkpoint_and_resume_finishes_the_run(
    engine, tmp_path: Path, data_dir: Path
):
    common = ("--engine", engine, "--steps", "200", "--checkpoint-every", "100")
    assert _job(tmp_path / "a", data_dir, *common) == 0
    # a limit already past when the first checkpoint comes: it stops there, outputs written
    assert _job(tmp_path / "b", data_dir, *common, "--max-minutes", "1e-9") == 0
    partial = json.loads((tmp_path / "b" / "regret.json").read_text())
    assert (partial["steps"], partial["target_steps"], partial["partial"]) == (100, 200, True)
    assert len(partial["curves"]["bbb"]) == 1
    assert (
        "PARTIAL: stopped by --max-minutes after 100 of 200 steps"
        in (tmp_path / "b" / "regret.md").read_text()
    )
    assert (tmp_path / "b" / "regret.png").is_file()
    assert _job(tmp_path / "b", data_dir, *common, "--resume") == 0  # the limit is no setting
    done, whole = (json.loads((tmp_path / d / "regret.json").read_text()) for d in "ba")
    assert done["regret"] == whole["regret"] and done["curves"] == whole["curves"]
    assert (done["steps"], done["partial"]) == (200, False)
    assert "PARTIAL" not in (tmp_path / "b" / "regret.md").read_text()


def test_max_minutes_must_be_positive(tmp_path: Path, data_dir: Path, capsys):
    assert _job(tmp_path, data_dir, "--steps", "5", "--max-minutes", "0") == 1
    assert "--max-minutes must be > 0, got 0.0" in capsys.readouterr().err
