"""Options shared by the commands: ``--device`` (``auto`` everywhere, resolved once and printed) and the user
errors that used to end in tracebacks."""

from __future__ import annotations

import argparse
import logging
import re

import pytest
import torch

from easytune.cli import build_parser, main
from easytune.device import resolve_device
from easytune.errors import ConfigError


def _device_actions(parser: argparse.ArgumentParser, path: str = "easytune"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _device_actions(sub, f"{path} {name}")
        elif action.dest == "device":
            yield path, action


def test_every_command_defaults_to_auto_device():
    found = dict(_device_actions(build_parser()))
    assert len(found) >= 12  # sample, eval, pretrain x3, reward x3, evaluator x2, finetune, analyze, bench x5
    # finetune's options are generated from its config dataclass (defaults there, the flag SUPPRESSed)
    from easytune.bench.comparison_config import CompareConfig
    from easytune.training.finetune_config import FinetuneConfig

    assert found["easytune finetune"].default == argparse.SUPPRESS and FinetuneConfig().device == "auto"
    assert found["easytune compare"].default == argparse.SUPPRESS and CompareConfig().device == "auto"
    found.pop("easytune finetune")
    found.pop("easytune compare")
    wrong = {cmd: a.default for cmd, a in found.items() if a.default not in ("auto", None)}
    assert not wrong, f"--device defaults that silently pick the CPU on a GPU machine: {wrong}"
    assert found["easytune info"].default is None  # info: every device, unless one is named


def test_resolve_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    for bad in ("tpu9", "cuda:x", "", "mps"):
        with pytest.raises(ConfigError, match="--device"):
            resolve_device(bad)


def _sample(out, *options: str) -> int:
    """``easytune sample`` of the embedded tiny MLD, 2 DDIM steps, 8 frames unless ``options`` say else."""
    return main(
        [
            "sample",
            "--ckpt",
            "default",
            "--text",
            "a person walks",
            "--steps",
            "2",
            "--length",
            "8",
            "--out",
            str(out),
            *options,
        ]
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--device cuda: .*(no CUDA support|no CUDA device)"):
        resolve_device("cuda")
    code = _sample(tmp_path / "x.npy", "--device", "cuda")
    err = capsys.readouterr().err
    assert code == 2 and "--device cuda" in err and "Traceback" not in err


def test_the_chosen_device_is_printed(tmp_path, caplog):
    out = tmp_path / "m.npy"
    with caplog.at_level(logging.INFO, logger="easytune"):
        code = _sample(out)
    assert code == 0 and out.exists()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"device: {expected}" in caplog.text


def test_sample_length_is_reported_in_frames(tmp_path, capsys):
    code = _sample(tmp_path / "m.npy", "--length", "250", "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 2 and "length 250 frames" in err and "196 frames at most" in err and "tokens" not in err
    assert not (tmp_path / "m.npy").exists()


def test_sampling_refuses_non_finite_options_and_weights(tmp_path, capsys):
    out = tmp_path / "m.npy"
    code = _sample(out, "--guidance", "nan", "--device", "cpu")
    assert code == 2 and "--guidance must be a finite number" in capsys.readouterr().err and not out.exists()

    from easytune.checkpoint import ASSETS, load_checkpoint

    ckpt = load_checkpoint(ASSETS / "mld_tiny.pt")
    state = ckpt["state_dict"]
    name = next(k for k, v in state.items() if v.is_floating_point() and k.startswith("denoiser."))
    ckpt["state_dict"][name] = ckpt["state_dict"][name].clone()
    ckpt["state_dict"][name].view(-1)[0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")  # as a broken run would have (easytune never writes one)
    code = main(
        [
            "sample",
            "--ckpt",
            str(tmp_path / "nan.pt"),
            "--text",
            "a person walks",
            "--steps",
            "2",
            "--length",
            "8",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"weight {name} holds NaN or inf" in err and not out.exists()


def test_version_and_python_dash_m(capsys):
    import subprocess
    import sys

    from easytune import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"easytune {__version__}"
    proc = subprocess.run([sys.executable, "-m", "easytune", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"easytune {__version__}"


def test_quickstart_options_come_from_its_config_and_bad_values_are_named(tmp_path, capsys):
    import dataclasses

    from easytune.config import flag_of
    from easytune.quickstart_config import QuickstartConfig

    with pytest.raises(SystemExit):
        main(["quickstart", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(
        flag_of(f) in text for f in dataclasses.fields(QuickstartConfig) if f.metadata.get("cli", True)
    )
    assert "--budget-s BUDGET_S training seconds per method and seed (default: 60.0)" in text
    for argv, message in [
        (["--budget-s", "nan"], r"--budget-s must be a finite number in \(0, inf\) seconds, got nan"),
        (["--k", "0"], "--k must be an integer >= 1, got 0"),
        (["--lr", "-1"], "--lr must be a finite number"),
    ]:
        assert main(["quickstart", "--out", str(tmp_path / "q"), *argv]) == 2
        assert re.search(message, capsys.readouterr().err), argv
    (tmp_path / "q.yaml").write_text("budget_s: 0\n")
    assert main(["quickstart", "--config", str(tmp_path / "q.yaml")]) == 2
    assert "--budget-s must be" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_sample_refuses_an_unusable_output_before_any_work(tmp_path, capsys, monkeypatch):
    import easytune.generation as generation

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(generation, "load_pipeline", never)
    for argv, message in [
        (["--out", "/proc/x.npy"], "--out /proc/x.npy: cannot write there"),
        (["--out", str(tmp_path)], "is a directory"),
        (["--out", str(tmp_path / "a.npy"), "--render", "/proc/x.gif"], "--render /proc/x.gif: cannot write"),
    ]:
        argv = ["sample", "--ckpt", "default", "--text", "a person walks", "--steps", "2", *argv]
        assert main(argv) == 2
        assert message in capsys.readouterr().err, argv


TRAINING_COMMANDS = [
    ("pretrain vae", "easytune.training.pretrain_config", "PretrainOptions"),
    ("pretrain mld", "easytune.training.pretrain_config", "PretrainOptions"),
    ("pretrain mdm", "easytune.training.pretrain_config", "PretrainOptions"),
    ("reward train", "easytune.training.reward_config", "RewardTrainConfig"),
    ("reward refine", "easytune.training.reward_config", "RewardTrainConfig"),
    ("evaluator train", "easytune.training.evaluator_config", "EvaluatorTrainConfig"),
]


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in command.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


@pytest.mark.parametrize("command, module, name", TRAINING_COMMANDS)
def test_training_options_are_generated_from_their_config_dataclass(command, module, name):
    """Issue 15: each training command's hyper-parameters are its config's fields (one source): every
    field with a flag is offered unless the stage excludes it, and no other option exists besides the
    per-invocation ones (cli._common.add_run_arguments) and refine's --init."""
    import dataclasses
    import importlib

    from easytune.config import flag_of
    from easytune.training import pretrain_config, reward_config

    cls = getattr(importlib.import_module(module), name)
    excluded = {
        "pretrain vae": {"vae", "objective"},
        "pretrain mld": {"rec_loss", "kl_weight", "joints_weight"},
        "pretrain mdm": {"vae", "rec_loss", "kl_weight", "joints_weight", "objective"},
        "reward train": set(reward_config.REFINE_ONLY),
        "reward refine": set(reward_config.TRAIN_ONLY),
        "evaluator train": set(),
    }[command]
    if command.startswith("pretrain"):
        stage = command.split()[1]
        assert excluded == {k for k, stages in pretrain_config.STAGE_ONLY.items() if stage not in stages}
    wanted = {
        flag_of(f) if f.default is not True else "--no-" + flag_of(f)[2:]
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli", True) and f.name not in excluded
    }
    run = {"--config", "--data", "--out", "--resume", "--overwrite", "--skip-data-check", "--device"}
    run |= {"--no-progress", "--wandb", "-h"} | ({"--init"} if command == "reward refine" else set())
    offered = {s for a in _subparser(command)._actions for s in a.option_strings if s != "--help"}
    assert offered == wanted | run


def test_a_reward_config_file_and_the_same_flags_give_identical_runs(tmp_path):
    from motion_data import write_random_motions

    data = write_random_motions(
        tmp_path / "d", [40 + 2 * i for i in range(12)], [(f"a person walks {i % 4}",) for i in range(12)]
    )
    (tmp_path / "run.yaml").write_text("steps: 2\nbatch_size: 6\nlr: 0.001\nnoise_prob: 0.5\nmode: M1T0\n")
    common = ["reward", "train", "--data", str(data), "--no-progress", "--text-encoder", "builtin"]
    assert main([*common, "--out", str(tmp_path / "file.pt"), "--config", str(tmp_path / "run.yaml")]) == 0
    flags = ["--steps", "2", "--batch-size", "6", "--lr", "0.001", "--noise-prob", "0.5", "--mode", "M1T0"]
    assert main([*common, "--out", str(tmp_path / "flags.pt"), *flags]) == 0
    a = torch.load(tmp_path / "file.pt", weights_only=True)
    b = torch.load(tmp_path / "flags.pt", weights_only=True)
    assert a["meta"]["train_config"] == b["meta"]["train_config"]
    assert a["meta"]["train_config"]["lr"] == 0.001 and a["meta"]["train_config"]["mode"] == "M1T0"
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # every run writes its resolved options beside the checkpoint: they repeat the run alone
    saved = tmp_path / "flags.pt.logs" / "config.yaml"
    assert saved.is_file() and "lr: 0.001" in saved.read_text()
    assert main([*common, "--out", str(tmp_path / "again.pt"), "--config", str(saved)]) == 0
    c = torch.load(tmp_path / "again.pt", weights_only=True)
    assert c["meta"]["train_config"] == b["meta"]["train_config"]
    assert all(torch.equal(c["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
    # a flag given overrides the file; a bad value in the file is named with its flag
    assert (
        main(
            [*common, "--out", str(tmp_path / "o.pt"), "--config", str(tmp_path / "run.yaml"), "--lr", "nan"]
        )
        == 2
    )
    (tmp_path / "bad.yaml").write_text("steps: 0\n")
    assert main([*common, "--out", str(tmp_path / "o.pt"), "--config", str(tmp_path / "bad.yaml")]) == 2
    assert not (tmp_path / "o.pt").exists()


def test_every_option_of_every_command_shows_its_default(capsys):
    """Issue 16: ``--help`` shows every default: each option that takes a value either says its default or
    is required (switches are off by default)."""
    from easytune.cli import _all_parsers

    parser = build_parser()
    missing = []
    for p in _all_parsers(parser):
        options = p.format_help().split("\noptions:", 1)[-1]
        entries = re.split(r"\n  (?=-)", options)  # one entry per option, its help lines included
        for action in p._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue
            flag = action.option_strings[-1]
            entry = next((e for e in entries if re.match(rf"(-\w+, )?{re.escape(flag)}\b", e)), "")
            if not re.search(r"\bdefault[: ]", " ".join(entry.split())):
                missing.append(f"{p.prog} {flag}")
    assert not missing, missing
