"""The `wageubn` command line through main([...]): outputs, files, one-line errors (exit 2)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wageubn import cli
from wageubn.models import list_models
from wageubn.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = """\
model: {name: small_cnn, width: 4}
data: {name: mnist, batch_size: 32, train_subset: 128, eval_subset: 100, eval_batch_size: 100}
optim: {lr: 0.0625}
train: {epochs: 1, log_every: 2, checkpoint_every_steps: 2, threads: 1}
"""


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wageubn: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_list_models(capsys):
    """One row per model: name, parameter count, input shape, classes."""
    code, out, _ = run(capsys, "list-models")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["model", "parameters"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert sorted(rows) == list_models()
    assert rows["small_cnn"] == ["54,778", "1×28×28", "10"]  # width 16, as created by default
    assert rows["preact_resnet20"][1:] == ["3×32×32", "10"]
    assert rows["preact_resnet50"][1:] == ["3×224×224", "1000"]


def test_version(capsys):
    import wageubn

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"wageubn {wageubn.__version__}"


def test_every_option_has_help():
    """Every option and positional of every command says what it is for in --help."""
    parser, _ = cli.build_parser()
    missing = []

    def walk(p, prefix):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}")
            elif action.help is None:
                missing.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")

    walk(parser, "wageubn")
    assert missing == []


def test_config_show(capsys, config):
    """config show prints the resolved config as YAML that loads back to the same config, every
    key with its meaning and default; train --help points at it."""
    import yaml

    from wageubn.train import load_run_config

    code, out, _ = run(capsys, "config", "show", str(config), "--optim.lr", "0.125",
                       "--quant.error2", "16")  # fmt: skip
    assert code == 0
    cfg = load_run_config(config, ["--optim.lr", "0.125", "--quant.error2", "16"])
    assert load_run_config(None, _flat(yaml.safe_load(out))) == cfg
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if ":" in line}
    assert "# Base learning rate" in lines["lr"] and "[default: 0.05]" in lines["lr"]
    assert lines["lr"].startswith("  lr: 0.125 ")
    assert "[preset paper: 8]" in lines["error2"]
    assert "[default: null]" in lines["max_steps"] and "[default: 128]" in lines["batch_size"]
    assert lines["# grad_range"].startswith("  # grad_range: 128")  # resolved preset, as comment
    line = assert_one_line_error(*run(capsys, "config", "show", "--optim.lrr", "1")[::2])
    assert "did you mean 'optim.lr'" in line
    proc = subprocess.run([sys.executable, "-m", "wageubn", "train", "--help"],
                          capture_output=True, text=True, timeout=120,
                          env=_env_with_this_checkout())  # fmt: skip
    assert "wageubn config show" in " ".join(proc.stdout.split())


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "kwargs":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_unknown_override_key_suggests(capsys, config):
    code, _, err = run(capsys, "train", str(config), "--optim.lrr", "0.1")
    line = assert_one_line_error(code, err)
    assert "'optim.lrr'; did you mean 'optim.lr'" in line


def test_config_errors_reported_together(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epoch: 2}\noptim: {momentun: 0.5}\n")
    line = assert_one_line_error(*run(capsys, "train", str(bad))[::2])
    assert "did you mean 'train.epochs'" in line and "did you mean 'optim.momentum'" in line


def test_missing_dataset_is_one_line(capsys, config, tmp_path):
    code, _, err = run(
        capsys,
        "train",
        str(config),
        "--data.name",
        "cifar10",
        "--data.root",
        str(tmp_path / "nowhere"),
        "--train.out_dir",
        str(tmp_path),
    )
    line = assert_one_line_error(code, err)
    assert "cifar10" in line
    assert not (tmp_path / "tiny").exists()  # nothing written for a run that cannot start


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("optim.lr", "0", "optim.lr must be > 0, got 0"),
        ("optim.lr", "0.0005", "0.0005 quantizes to 0 with 10 lr bits"),
        ("optim.momentum", "1.5", "optim.momentum must be in [0, 1], got 1.5"),
        ("optim.momentum", "-0.25", "optim.momentum must be in [0, 1], got -0.25"),
    ],
)
def test_lr_and_momentum_that_cannot_train_are_config_errors(
    capsys, config, tmp_path, key, value, expected
):
    """A base lr of 0 or one that quantizes to 0 and a momentum outside [0, 1] are refused before
    anything is written: one line naming the value and the fix, exit status 2."""
    line = assert_one_line_error(
        *run(capsys, "train", str(config), f"--{key}", value, "--train.out_dir", str(tmp_path))[::2]
    )
    assert expected in line and ("use lr >=" in line or "the paper" in line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_argparse_errors_are_one_line(capsys):
    assert_one_line_error(*run(capsys, "train", "--resume")[::2])
    assert_one_line_error(*run(capsys, "frobnicate")[::2])
    assert_one_line_error(*run(capsys, "list-models", "--optim.lr", "1")[::2])
    assert_one_line_error(*run(capsys, "train")[::2])


def test_train_eval_plot(capsys, config, tmp_path):
    """train writes config, run info, metrics and checkpoints; eval and plot read them."""
    out_dir = tmp_path / "runs"
    code, out, _ = run(
        capsys, "train", str(config), "--train.out_dir", str(out_dir), "--optim.lr=0.125"
    )
    assert code == 0
    run_dir = out_dir / "tiny"
    assert "completed after 4 steps" in out and str(run_dir) in out
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.yaml",
        "run.json",
        "metrics.jsonl",
        "metrics.csv",
        "last.pt",
        "best.pt",
    } <= names
    info = json.loads((run_dir / "run.json").read_text())
    assert info["seed"] == 0 and info["status"] == "completed" and info["torch"]
    assert info["command"][:2] == ["wageubn", "train"] and "--optim.lr=0.125" in info["command"]
    assert "lr: 0.125" in (run_dir / "config.yaml").read_text()
    rows = read_metrics(run_dir)
    assert [r["kind"] for r in rows] == ["train", "train", "epoch", "eval"]
    assert (run_dir / "metrics.csv").read_text().splitlines()[0].startswith("kind,epoch,step,loss")

    code, out, _ = run(
        capsys, "eval", str(run_dir / "best.pt"), "--split", "val", "--batch-size", "1000"
    )
    assert code == 0 and out.startswith("val: accuracy ") and "10000 images" in out
    assert 0.0 <= float(out.split("accuracy ")[1].split()[0]) <= 1.0

    png = tmp_path / "curves.png"
    code, out, _ = run(capsys, "plot", str(run_dir), str(run_dir), "--out", str(png))
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((run_dir / "last.pt").read_bytes()[:1000])
    line = assert_one_line_error(*run(capsys, "eval", str(corrupt))[::2])
    assert "corrupt" in line

    # resume a finished run with more epochs, from the run directory alone
    code, out, _ = run(capsys, "train", "--resume", str(run_dir), "--train.epochs", "2")
    assert code == 0 and "completed after 8 steps" in out
    assert [r["kind"] for r in read_metrics(run_dir)][-2:] == ["epoch", "eval"]


def test_plot_of_a_non_run_is_one_line(capsys, tmp_path):
    assert_one_line_error(
        *run(capsys, "plot", str(tmp_path), "--out", str(tmp_path / "x.png"))[::2]
    )


@pytest.mark.parametrize(
    "argv, missing, extra",
    [
        (["plot", "RUN", "--out", "OUT/curves.png"], "matplotlib", "plot"),
        (["inspect", "RUN"], "matplotlib", "plot"),
        (["profile", "--model", "small_cnn", "--preset", "paper", "--batch", "2", "--plot",
          "OUT/energy.png"], "matplotlib", "plot"),
        (["export", "RUN/last.pt", "--out", "OUT/model.safetensors"], "safetensors", "export"),
    ],
    ids=["plot", "inspect", "profile-plot", "export"],
)  # fmt: skip
def test_missing_optional_extra_names_the_pip_install(
    capsys, monkeypatch, tmp_path, argv, missing, extra
):
    """Without matplotlib / safetensors a command says which `pip install "torch-wageubn[...]"`
    fixes it (one line, exit 2), before doing any work."""
    for name in list(sys.modules):
        if name == missing or name.startswith(missing + "."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, missing, None)  # importing it raises ModuleNotFoundError
    argv = [a.replace("RUN", str(tmp_path / "run")).replace("OUT", str(tmp_path)) for a in argv]
    line = assert_one_line_error(*run(capsys, *argv)[::2])
    assert f'needs {missing}, which is not installed: pip install "torch-wageubn[{extra}]"' in line
    assert sorted(tmp_path.iterdir()) == []


def test_training_failure_exit_1(capsys, config, tmp_path):
    code, _, err = run(
        capsys,
        "train",
        str(config),
        "--quant.preset",
        "fp32",
        "--optim.lr",
        "1e9",
        "--train.out_dir",
        str(tmp_path),
    )
    assert code == 1 and "training stopped at epoch 0 step" in err


def _env_with_this_checkout() -> dict[str, str]:
    """The environment with this checkout's src/ first on the path (a relative PYTHONPATH=src
    would not survive a change of directory)."""
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def test_python_dash_m(tmp_path):
    """`python -m wageubn` is the same CLI."""
    proc = subprocess.run(
        [sys.executable, "-m", "wageubn", "list-models"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=_env_with_this_checkout(),
    )
    assert proc.returncode == 0
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == list_models()


def test_command_modules_registration_hook(capsys, monkeypatch, tmp_path):
    """A module listed in COMMAND_MODULES adds its subcommand through add_parser(subparsers)."""
    mod = tmp_path / "extra_cmd.py"
    mod.write_text(
        "from wageubn.cli import UsageError\n"
        "def hello(args):\n"
        "    if args.name == 'bad':\n"
        "        raise UsageError('bad name')\n"
        "    print('hello', args.name)\n"
        "    return 0\n"
        "def add_parser(subparsers):\n"
        "    p = subparsers.add_parser('hello')\n"
        "    p.add_argument('name')\n"
        "    p.set_defaults(func=hello)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "extra_cmd"))
    code, out, _ = run(capsys, "hello", "world")
    assert code == 0 and out == "hello world\n"
    assert "bad name" in assert_one_line_error(*run(capsys, "hello", "bad")[::2])
