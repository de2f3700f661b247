"""wageubn ablate / wageubn.ablate: one run directory per variant with that variant's quant config,
a table/JSON/PNG with one row per variant, resume without retraining, one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

import wageubn
from wageubn import cli
from wageubn.config import ROLES, WAGEUBNConfig
from wageubn.train import RunConfig, load_run_config
from wageubn.train import ablation as ablation_module
from wageubn.train import loop as loop_module
from wageubn.train.ablation import GROUPS, VARIANTS, AblationError, Variant, ablate, variants_for
from wageubn.train.ablation_report import format_table, plot_ablation
from wageubn.train.progress import Progress

try:
    import matplotlib  # noqa: F401

    HAVE_MPL = True
except ImportError:
    HAVE_MPL = False


def tiny(tmp_path: Path, **overrides) -> RunConfig:
    """small_cnn width 4 on 64 MNIST images: 2 steps of batch 32, evaluated on 64 test images."""
    values = {
        "model.name": "small_cnn",
        "model.width": 4,
        "data.batch_size": 32,
        "data.train_subset": 64,
        "data.eval_subset": 64,
        "data.eval_batch_size": 64,
        "optim.lr": 0.0625,
        "train.out_dir": str(tmp_path),
        "train.run_name": "tiny",
        "train.log_every": 1,
        "train.threads": 1,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_run_config(None, values)


@pytest.fixture
def trains(monkeypatch) -> list[tuple[str, bool]]:
    """Every train() call of the ablation: (variant, resumed?)."""
    calls: list[tuple[str, bool]] = []
    real = ablation_module.train

    def counted(cfg, *, resume=None, **kwargs):
        calls.append((cfg.train.run_name, resume is not None))
        return real(cfg, resume=resume, **kwargs)

    monkeypatch.setattr(ablation_module, "train", counted)
    return calls


def saved_quant(run_dir: str | Path) -> WAGEUBNConfig:
    values = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    return RunConfig.from_dict(values).quant_config()


# -- the variants ---------------------------------------------------------------------------------


def test_groups_cover_every_role_once_and_variants_change_what_they_say(tmp_path):
    """Each role is in exactly one data path; float-X sets X's roles to None, only-X every other
    role; fp32 all; stem-head the two flags; baseline nothing."""
    assert sorted(r for roles in GROUPS.values() for r in roles) == sorted(ROLES)
    table = variants_for(tiny(tmp_path))
    assert list(table) == list(VARIANTS) and all(isinstance(v, Variant) for v in table.values())
    paper = WAGEUBNConfig.preset("paper")
    for group, roles in GROUPS.items():
        assert table[f"float-{group}"].changes == {r: None for r in roles}
        only = paper.replace(**table[f"only-{group}"].changes)
        assert [r for r in ROLES if only.bits(r) is not None] == [r for r in ROLES if r in roles]
    assert table["fp32"].changes == {r: None for r in ROLES}
    assert table["stem-head"].changes == {"quantize_stem": True, "quantize_head": True}
    assert table["baseline"].changes == {} and "preset paper" in table["baseline"].changed


def test_variants_that_change_nothing_are_left_out_or_refused(tmp_path):
    """A path already float has no float-/only- variant (asking for one is an error); int8
    arithmetic falls back to simulated where a GEMM operand is float, and says so."""
    cfg = tiny(tmp_path, quant__grad=None, quant__quantize_stem=True, quant__quantize_head=True)
    table = variants_for(cfg)
    for name in ("float-G", "only-G", "stem-head"):
        assert isinstance(table[name], str), name
    with pytest.raises(AblationError, match="float-G: the config keeps G"):
        ablate(cfg, variants=["float-G"], out=tmp_path / "x", plot=False)
    int8 = variants_for(tiny(tmp_path, quant__preset="int8"))
    assert int8["float-W"].changes == {"weight": None, "arithmetic": "simulated"}
    assert "arithmetic simulated" in int8["float-W"].changed
    assert "arithmetic" not in int8["float-BN"].changes  # BN is no GEMM operand
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "variants, match",
    [
        (["float-G", "baselin"], r"unknown variant 'baselin' \(did you mean 'baseline'\?\)"),
        (["nonsense"], "unknown variant 'nonsense'; variants: baseline, fp32, float-W"),
        ([" , "], "no variant named"),
    ],
)
def test_bad_variant_names_are_refused_before_training(tmp_path, trains, variants, match):
    with pytest.raises(AblationError, match=match):
        ablate(tiny(tmp_path), variants=variants, plot=False)
    assert trains == [] and not (tmp_path / "tiny-ablate").exists()


def test_an_fp32_config_has_nothing_to_ablate(tmp_path, trains):
    with pytest.raises(AblationError, match="quantizes nothing .*nothing to ablate"):
        ablate(tiny(tmp_path, quant__preset="fp32"), plot=False)
    assert trains == []


# -- runs ----------------------------------------------------------------------------------------


def test_one_run_directory_per_variant_with_its_config_and_one_row_each(tmp_path, trains):
    """baseline, float-BN and only-G train into OUT/<variant>/ whose resolved config.yaml holds
    the variant's roles; JSON, table and chart have one row per variant; gaps are points."""
    out = tmp_path / "abl"
    rows = wageubn.ablate(
        tiny(tmp_path), variants="baseline,float-BN,only-G", out=out, plot=HAVE_MPL
    )
    assert [r["variant"] for r in rows] == ["baseline", "float-BN", "only-G"]
    assert trains == [("baseline", False), ("float-BN", False), ("only-G", False)]
    paper = WAGEUBNConfig.preset("paper")
    assert saved_quant(out / "baseline") == paper
    assert saved_quant(out / "float-BN") == paper.replace(**{r: None for r in GROUPS["BN"]})
    only_g = saved_quant(out / "only-G")
    assert only_g.grad == 8 and [r for r in ROLES if only_g.bits(r) is not None] == ["grad"]
    base = rows[0]["acc"]
    for r in rows:
        assert r["run_dir"] == str(out / r["variant"]) and r["status"] == "completed"
        assert r["step"] == 2 and r["eval_split"] == "test" and not r["reused"]
        assert r["gap_to_baseline_pts"] == pytest.approx(100 * (r["acc"] - base))
        assert r["gap_to_fp32_pts"] is None  # fp32 was not run
        last = [m for m in _metrics(r["run_dir"]) if m["kind"] == "eval"][-1]
        assert (r["acc"], r["loss"]) == (last["acc"], last["loss"])
        trained = [m for m in _metrics(r["run_dir"]) if m["kind"] in ("train", "epoch")][-1]
        assert r["train_loss"] == trained["loss"] and r["train_loss"] > 0
    doc = json.loads((out / "ablation.json").read_text())
    assert doc["variants"] == rows and doc["config"]["model"]["width"] == 4
    table = (out / "ablation.txt").read_text().splitlines()
    assert table[0].split()[:3] == ["variant", "changed", "test"]
    assert "train loss" in table[0]
    assert [line.split()[0] for line in table[1:]] == ["baseline", "float-BN", "only-G"]
    assert f"{rows[0]['train_loss']:.4f}" in table[1].split()
    assert (out / "ablation.png").is_file() == HAVE_MPL


class InterruptAt(Progress):
    """Ctrl-C after the given step (the loop records "interrupted" and re-raises)."""

    def __init__(self, step: int) -> None:
        self.at = step

    def update(self, step: int, epoch: int, stats: dict) -> None:
        if step == self.at:
            raise KeyboardInterrupt


def test_rerun_reads_finished_variants_back_and_resumes_an_interrupted_one(tmp_path, trains):
    """A,B; then A,B,C interrupted in C; then A,B,C again: A and B are trained once, C resumes
    from its checkpoint and ends bit for bit as an uninterrupted C. C alone later still gets its
    gap to the baseline, read from the baseline's finished run."""
    cfg = tiny(tmp_path, data__train_subset=96, train__checkpoint_every_steps=1)  # 3 steps
    out = tmp_path / "abl"
    first = ablate(cfg, variants=["baseline", "float-G"], out=out, plot=False)
    assert trains == [("baseline", False), ("float-G", False)]
    with pytest.raises(KeyboardInterrupt):
        ablate(cfg, variants=["baseline", "float-G", "only-E2"], out=out, plot=False,
               progress=InterruptAt(2))  # fmt: skip
    info = json.loads((out / "only-E2" / "run.json").read_text())
    assert info["status"].startswith("interrupted at step 2")
    rows = ablate(cfg, variants=["baseline", "float-G", "only-E2"], out=out, plot=False)
    assert trains == [("baseline", False), ("float-G", False), ("only-E2", False),
                      ("only-E2", True)]  # fmt: skip
    assert [r["reused"] for r in rows] == [True, True, False]
    assert rows[:2] == [{**r, "reused": True} for r in first]
    assert [r["step"] for r in rows] == [3, 3, 3]
    resumes = json.loads((out / "only-E2" / "run.json").read_text())["resumes"]
    assert [r["step"] for r in resumes] == [1]  # the checkpoint before the interrupted step
    whole = ablate(cfg, variants=["only-E2"], out=tmp_path / "whole", plot=False)[0]
    assert (rows[2]["acc"], rows[2]["loss"]) == (whole["acc"], whole["loss"])
    again = ablate(cfg, variants=["only-E2"], out=out, plot=False)  # baseline read from disk
    assert again == [{**rows[2], "reused": True}] and len(trains) == 5


def test_a_diverging_variant_is_a_row_and_the_ablation_goes_on(tmp_path, monkeypatch):
    """A TrainingError (non-finite loss) in one variant: status "failed: ...", no accuracy."""
    real_step = loop_module._Run._step

    def step(self, x, y, epoch):
        if self.run_dir.name == "float-G" and self.step == 2:
            raise self._error(epoch, "the loss is nan")
        return real_step(self, x, y, epoch)

    monkeypatch.setattr(loop_module._Run, "_step", step)
    rows = ablate(tiny(tmp_path), variants=["float-G", "only-G"], out=tmp_path / "a", plot=False)
    assert rows[0]["status"].startswith("failed: training stopped") and rows[0]["acc"] is None
    assert rows[0]["gap_to_baseline_pts"] is None
    assert rows[1]["status"] == "completed" and rows[1]["acc"] is not None
    assert "failed" in format_table(rows).splitlines()[1].split()


# -- CLI -----------------------------------------------------------------------------------------


def _metrics(run_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[-1].startswith("wageubn: error: "), err
    return lines[-1]


def test_cli_prints_the_table_and_reports_errors_in_one_line(tmp_path, capsys):
    """Exit 0 with the table; unknown variant, fp32 config, a corrupt or foreign variant
    directory: one line on stderr, exit 2, nothing trained."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(tmp_path).to_dict()))
    out = tmp_path / "abl"
    code, stdout, _ = run(capsys, "ablate", str(config), "--variants", "baseline",
                          "--variants", "fp32", "--out", str(out), "--no-plot", "--no-progress")  # fmt: skip
    assert code == 0
    lines = stdout.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["baseline", "fp32"]
    assert lines[-1] == f"wrote {out}/ablation.json, {out}/ablation.txt"
    gaps = json.loads((out / "ablation.json").read_text())["variants"][1]
    assert gaps["gap_to_fp32_pts"] == 0 and gaps["gap_to_baseline_pts"] is not None

    line = one_line_error(*run(capsys, "ablate", str(config), "--variants", "flaot-G")[::2])
    assert "did you mean 'float-G'" in line
    line = one_line_error(*run(capsys, "ablate", str(config), "--quant.preset", "fp32")[::2])
    assert "nothing to ablate" in line
    line = one_line_error(*run(capsys, "ablate", str(config), "--out", str(out),
                               "--variants", "fp32", "--optim.lr", "0.125")[::2])  # fmt: skip
    assert "trained with another recipe (optim.lr 0.0625 there vs 0.125 now)" in line
    (out / "fp32" / "run.json").write_text("{")
    line = one_line_error(*run(capsys, "ablate", str(config), "--out", str(out),
                               "--variants", "fp32", "--no-plot")[::2])  # fmt: skip
    assert "fp32/run.json: cannot be read" in line and f"remove {out / 'fp32'}" in line
    foreign = out / "only-W"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    line = one_line_error(*run(capsys, "ablate", str(config), "--out", str(out),
                               "--variants", "only-W", "--no-plot")[::2])  # fmt: skip
    assert "not a run directory" in line and (foreign / "notes.txt").read_text() == "mine"


def test_missing_matplotlib_is_named_before_training(tmp_path, capsys, monkeypatch, trains):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(tmp_path).to_dict()))
    line = one_line_error(*run(capsys, "ablate", str(config), "--out", str(tmp_path / "o"))[::2])
    assert 'needs matplotlib, which is not installed: pip install "torch-wageubn[plot]"' in line
    assert trains == [] and not (tmp_path / "o").exists()


@pytest.mark.skipif(not HAVE_MPL, reason="needs matplotlib (the plot extra)")
def test_the_bar_chart_is_written_for_failed_and_reference_rows(tmp_path):
    rows = [
        {"variant": v, "changed": "", "status": s, "acc": a, "gap_to_baseline_pts": g,
         "gap_to_fp32_pts": None, "eval_split": "test", "step": 5, "wall_s": 1.0}
        for v, s, a, g in [("baseline", "completed", 0.95, 0.0), ("fp32", "completed", 0.97, 2.0),
                           ("float-G", "failed: nan", None, None)]
    ]  # fmt: skip
    path = plot_ablation(rows, tmp_path / "sub" / "ablation.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert format_table(rows).splitlines()[3].split()[:2] == ["float-G", "failed"]
