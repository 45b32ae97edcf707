"""``pyro-dwp dwp``: a tiny pipeline writes every output and the table, a rerun skips it all;
by default the classifier runs alone with the shipped prior."""

import argparse
import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_shared_data

from pyro_dwp.cli import main
from pyro_dwp.data import DATA_ENV_VAR
from pyro_dwp.experiments import dwp_pipeline, dwp_prior, dwp_source

needs_data = needs_shared_data("mnist", "notmnist")


def _args(out, *extra):
    return [
        "dwp",
        "--out", str(out),
        "--data-dir", str(SHARED_DATA),
        "--train-prior",
        "--source-nets", "2",
        "--channels", "4", "8",
        "--source-epochs", "5",
        "--source-subset", "2000",
        "--prior-epochs", "1",
        "--n-train", "20",
        "--seeds", "0",
        "--epochs", "1",
        "--n-test", "100",
        "--no-progress",
        *extra,
    ]  # fmt: skip


@needs_data
@pytest.mark.slow
def test_tiny_pipeline_writes_everything_and_a_rerun_skips_it(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert main(_args(out)) == 0
    captured = capsys.readouterr()
    table = captured.out.split("\n{")[0]  # the table, then the job's JSON result
    for prior in ("dwp", "normal", "log-uniform"):
        assert f"| {prior} | " in table
    assert "Test accuracy" in table and "Test NLL" in table and "N=20" in table
    summary = json.loads((out / "dwp.json").read_text())
    assert summary["preset"] == "quick" and summary["settings"]["channels"] == [4, 8]
    assert summary["prior"] is None  # trained by the pipeline
    assert set(summary["stages"]) == {"source", "prior", "classify/baselines", "classify/dwp"}
    assert set(summary["results"]) == {"dwp N=20", "normal N=20", "log-uniform N=20"}
    outputs = summary["outputs"]
    paths = [*outputs["source"], *outputs["prior"], outputs["classify"]["table"]]
    paths += [outputs["classify"]["figure"], *outputs["classify"]["baselines"]]
    for path in paths:
        assert Path(path).exists(), path
    for plot in ("samples_conv1.png", "samples_conv2.png", "latent_conv1.png"):
        assert str(out / "prior" / plot) in outputs["prior"]
    assert (out / "classify" / "figure2.png").stat().st_size > 10_000
    # The source nets of the two runs' channels are the target's: the VAEs' inputs match.
    assert "--channels 4 8" in " ".join(summary["stages"]["source"]["argv"])
    # A rerun with the same settings skips every stage and rewrites only the summaries.
    watched = [out / "source" / "kernels_conv2.pt", out / "prior" / "vae_conv2.pt"]
    watched.append(out / "classify" / "dwp" / "dwp_classify.json")
    mtimes = [p.stat().st_mtime_ns for p in watched]
    assert main(_args(out)) == 0
    captured = capsys.readouterr()
    assert captured.err.count("finished in an earlier run") == 4
    assert [p.stat().st_mtime_ns for p in watched] == mtimes
    rerun = json.loads((out / "dwp.json").read_text())
    assert rerun["stages"] == summary["stages"] and rerun["results"] == summary["results"]
    # Other source settings in the same folder are refused before anything runs.
    assert main(_args(out, "--source-epochs", "2")) == 1
    assert "other settings" in capsys.readouterr().err


def test_unknown_preset_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["dwp", "--out", str(tmp_path), "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_missing_data_is_reported_before_any_training(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    missing = tmp_path / "nowhere"
    assert main(["dwp", "--out", str(tmp_path / "o"), "--data-dir", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"--data-dir {missing} is not a directory" in err and "notmnist/" in err
    assert main(["dwp", "--out", str(tmp_path / "o"), "--train-prior"]) == 1
    assert "No data directory" in capsys.readouterr().err
    (missing / "notmnist").mkdir(parents=True)
    train = ["dwp", "--out", str(tmp_path / "o"), "--data-dir", str(missing), "--train-prior"]
    assert main(train) == 1
    assert "notMNIST file(s) not found" in capsys.readouterr().err
    (missing / "mnist").mkdir()  # the shipped prior needs MNIST only
    assert main(["dwp", "--out", str(tmp_path / "o"), "--data-dir", str(missing)]) == 1
    assert "MNIST file(s) not found" in capsys.readouterr().err
    assert not (tmp_path / "o" / "source").exists()


def test_bad_override_is_reported(tmp_path, capsys):
    assert main(["dwp", "--out", str(tmp_path), "--epochs", "0"]) == 1
    assert "--epochs must be >= 1" in capsys.readouterr().err
    # the prior's overrides with the shipped prior: refused, not ignored
    assert main(["dwp", "--out", str(tmp_path), "--source-nets", "3", "--prior-epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert "--source-nets, --prior-epochs shape(s) the trained prior" in err
    assert "add --train-prior" in err and not (tmp_path / "dwp.json").exists()


@needs_data
def test_default_runs_the_classifier_alone_with_the_shipped_prior(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    tiny = ["--channels", "4", "8", "--n-train", "20", "--epochs", "1", "--n-test", "100"]
    argv = ["dwp", "--out", str(out), "--data-dir", str(SHARED_DATA), "--no-progress", *tiny]
    assert main(argv) == 0
    table = capsys.readouterr().out.split("\n{")[0]
    assert "the shipped prior 'notmnist'" in table
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows[1:4] == ["dwp", "normal", "log-uniform"]  # under the header: DWP first
    summary = json.loads((out / "dwp.json").read_text())
    assert summary["prior"] == "notmnist"
    assert set(summary["stages"]) == {"classify/baselines", "classify/dwp"}
    assert "--pretrained notmnist" in " ".join(summary["stages"]["classify/dwp"]["argv"])
    assert set(summary["results"]) == {"dwp N=20", "normal N=20", "log-uniform N=20"}
    for accuracy_nll in summary["results"].values():
        assert 0 <= accuracy_nll["accuracy"] <= 1 and accuracy_nll["nll"] > 0
    assert Path(summary["outputs"]["prior"], "vae_conv1.pt").is_file()
    assert not (out / "source").exists() and not (out / "prior").exists()
    # a rerun skips both runs; a trained prior in the same folder is refused
    assert main(argv) == 0
    assert capsys.readouterr().err.count("finished in an earlier run") == 2
    assert main([*argv, "--train-prior"]) == 1
    assert "holds a run with the prior notmnist" in capsys.readouterr().err


def test_kernel_gauge_reaches_the_source_stage_with_the_target_widths(tmp_path):
    args = argparse.Namespace(**{k: None for k in dwp_pipeline._OPTIONS}, preset="quick")
    args.kernel_gauge = "he"
    settings = dwp_pipeline._settings(args)
    assert settings["kernel_gauge"] == "he" and settings["channels"] == [32, 16]
    source = dict(dwp_pipeline._plan(tmp_path, settings, "dwp", None))["source"]
    parser = argparse.ArgumentParser()
    dwp_source.add_arguments(parser)
    parsed = parser.parse_args([str(a) for a in source[1:]])
    assert parsed.kernel_gauge == "he" and parsed.target_channels == [32, 16]
    assert parsed.channels == [32, 16]
    args.kernel_gauge = None  # not given: dwp-source's default, and no extra flags
    source = dict(dwp_pipeline._plan(tmp_path, dwp_pipeline._settings(args), "dwp", None))
    assert "--kernel-gauge" not in source["source"] and "--target-channels" not in source["source"]


def test_decoder_options_and_code_prior_reach_the_prior_stage(tmp_path):
    args = argparse.Namespace(**{k: None for k in dwp_pipeline._OPTIONS}, preset="quick")
    args.decoder_scale, args.decoder_mean = "shared", "polar"
    args.code_prior_components = [16, 64]
    prior = dict(dwp_pipeline._plan(tmp_path, dwp_pipeline._settings(args), "dwp", None))["prior"]
    parser = argparse.ArgumentParser()
    dwp_prior.add_arguments(parser)
    parsed = parser.parse_args([str(a) for a in prior[1:]])
    assert (parsed.decoder_scale, parsed.decoder_mean) == ("shared", "polar")
    assert parsed.code_prior_components == [16, 64]
    args.decoder_scale = args.decoder_mean = args.code_prior_components = None  # the paper's
    prior = dict(dwp_pipeline._plan(tmp_path, dwp_pipeline._settings(args), "dwp", None))["prior"]
    assert "--decoder-scale" not in prior and "--decoder-mean" not in prior
    assert "--code-prior-components" not in prior
    parsed = parser.parse_args([str(a) for a in prior[1:]])
    assert (parsed.decoder_scale, parsed.decoder_mean) == ("per-code", "direct")
    assert parsed.code_prior_components is None
