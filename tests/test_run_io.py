"""Files a run reads and writes failing under it: a corrupt image, an out_dir that is a file or
read-only, a disk that fills up mid-run, a read-only run directory on resume. Each is one line,
exit status 2, says what happened and what is saved; no saved file is damaged."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from test_train import tiny
from wageubn import cli
from wageubn.train import TrainingIOError, load_checkpoint, train
from wageubn.train.metrics import MetricsWriter


def one_line_error(capsys, argv: list[str]) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("wageubn: error: ")
    return lines[0]


def _config(tmp_path: Path, **over) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(tiny(tmp_path / "runs", **over).to_dict()))  # JSON is YAML
    return path


def _status(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["status"]


# -- a corrupt image ----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_in_the_training_split(tmp_path, capsys, workers):
    """One undecodable file among the training images: one line naming it and the last good
    checkpoint, exit 2, run.json says failed (also when a DataLoader worker decoded it)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = torch.randint(0, 256, (12, 12, 3), dtype=torch.uint8, generator=gen)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    bad = tmp_path / "data" / "train" / "b" / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # a PNG signature, then nothing valid
    path = _config(
        tmp_path,
        data__name="imagefolder",
        data__root=str(tmp_path / "data"),
        data__eval_split="val",
        data__image_size=8,
        data__batch_size=2,
        data__num_workers=workers,
        data__train_subset=None,
        data__eval_subset=None,
        data__eval_batch_size=None,
        model__width=None,
        train__checkpoint_every_steps=1,
        train__epochs=1,
    )
    line = one_line_error(capsys, ["train", str(path), "--no-progress"])
    assert f"{bad}: cannot decode image" in line and "replace or remove" in line
    assert "Caught" not in line and "Original Traceback" not in line
    assert "last good checkpoint:" in line
    assert _status(tmp_path / "runs" / "run").startswith("failed: training stopped at epoch 0")


# -- out_dir ------------------------------------------------------------------------------------


def test_out_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("not a directory")
    line = one_line_error(capsys, ["train", str(_config(tmp_path)), "--no-progress"])
    assert f"train.out_dir {blocker}: cannot create the run directory" in line
    assert "nothing was written" in line and "--train.out_dir DIR" in line
    assert blocker.read_text() == "not a directory"


def _read_only(monkeypatch, root: Path) -> None:
    """Writes under ``root`` fail as on a read-only mount (root ignores chmod, so patch)."""

    def refuse(path) -> None:
        if Path(path).resolve().is_relative_to(root.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    real_mkdir, real_mkstemp = Path.mkdir, tempfile.mkstemp

    def mkdir(self, *args, **kwargs):
        refuse(self)
        return real_mkdir(self, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        refuse(dir if dir is not None else tempfile.gettempdir())
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_read_only_out_dir(tmp_path, capsys, monkeypatch):
    path = _config(tmp_path)
    (tmp_path / "runs").mkdir()
    _read_only(monkeypatch, tmp_path / "runs")
    line = one_line_error(capsys, ["train", str(path), "--no-progress"])
    assert "cannot create the run directory" in line and "Read-only file system" in line
    assert list((tmp_path / "runs").iterdir()) == []


def test_resume_into_a_read_only_run_directory(tmp_path, capsys, monkeypatch):
    """Nothing is trained, no file of the run changes, the message says how to go on."""
    first = train(tiny(tmp_path, train__max_steps=4))
    run = Path(first["run_dir"])
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    _read_only(monkeypatch, run)
    line = one_line_error(capsys, ["train", "--resume", str(run), "--train.max_steps", "8"])
    assert f"cannot write to the run directory {run} (Read-only file system)" in line
    assert (
        f"nothing was trained; {run / 'last.pt'} (step 4) and the run's files are unchanged" in line
    )
    assert "copy it elsewhere and resume from the copy" in line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# -- the disk fills up mid-run --------------------------------------------------------------------


def _disk_full_at(monkeypatch, what: str, after: int) -> None:
    """ENOSPC from the ``after``-th+1 fsync of a ``.last.pt`` temp file, or from the metrics."""
    if what == "checkpoint":
        real, calls = os.fsync, []

        def fsync(fd):
            if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".last.pt."):
                calls.append(fd)
                if len(calls) > after:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    else:
        real_write, rows = MetricsWriter.write, []

        def write(self, row):
            rows.append(row)
            if len(rows) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_write(self, row)

        monkeypatch.setattr(MetricsWriter, "write", write)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name an fd")
@pytest.mark.parametrize("what", ["checkpoint", "metrics"])
def test_disk_full_mid_run(tmp_path, capsys, monkeypatch, what):
    """ENOSPC while writing the checkpoint of step 6 (or a metrics row): the run stops with one
    line saying what failed and that last.pt of step 3 is intact; the temporary file is gone;
    run.json says failed; after freeing space the run resumes to its end."""
    path = _config(tmp_path)
    _disk_full_at(monkeypatch, what, after=1 if what == "checkpoint" else 2)
    line = one_line_error(capsys, ["train", str(path), "--no-progress"])
    run = tmp_path / "runs" / "run"
    if what == "checkpoint":
        assert f"cannot write the checkpoint {run / 'last.pt'} (No space left on device)" in line
        assert "epoch 0 step 6" in line
    else:
        assert f"the disk holding {run} is full" in line and "step 6" in line
    assert f"last good checkpoint: {run / 'last.pt'} (step 3)" in line
    assert (
        f"free space or fix the directory, then continue with wageubn train --resume {run}" in line
    )
    assert load_checkpoint(run / "last.pt")["step"] == 3
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert _status(run).startswith("failed: training stopped at epoch 0 step 6")
    monkeypatch.undo()
    resumed = train(tiny(tmp_path / "runs"), resume=run)
    assert resumed["step"] == 16 and resumed["status"] == "completed"


def test_library_raises_training_io_error(tmp_path, monkeypatch):
    """From Python the same failure is a TrainingIOError (a TrainingError)."""
    _disk_full_at(monkeypatch, "metrics", after=0)
    with pytest.raises(TrainingIOError, match="is full"):
        train(tiny(tmp_path))
