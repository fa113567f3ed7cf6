"""robustjax.runfiles: atomic writes under a real SIGKILL, stray temporaries, and the up-front
checks (read-only folder, a path below a file, a full disk) that the report, AutoAttack and the
ablation runner make before any compute."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from robustjax import runfiles
from robustjax.runfiles import OutputError

# Writes three files; ROBUSTJAX_FAULT_KILL_AT_WRITE decides where the process dies.
# (runfiles is loaded from its file: importing the package would import JAX, seconds of CPU)
WRITER = textwrap.dedent("""
    import importlib.util, pathlib, sys
    spec = importlib.util.spec_from_file_location("runfiles", sys.argv[2])
    runfiles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runfiles)
    out = pathlib.Path(sys.argv[1])
    for i in range(1, 4):
        runfiles.atomic_write_text(out / f"r{i}.json", '{"i": %d, "pad": "%s"}' % (i, "x" * 5000))
""")


def _run_writer(out, fault):
    env = {**os.environ, runfiles.FAULT_ENV: fault}
    return subprocess.run([sys.executable, "-c", WRITER, str(out), runfiles.__file__], env=env,
                          capture_output=True, text=True, timeout=60)


def test_sigkill_after_and_during_a_write_leaves_only_whole_files(tmp_path):
    after = tmp_path / "after"
    proc = _run_writer(after, "2")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted(p.name for p in after.iterdir()) == ["r1.json", "r2.json"]
    assert [json.loads((after / f"r{i}.json").read_text())["i"] for i in (1, 2)] == [1, 2]

    during = tmp_path / "during"
    (during).mkdir()
    (during / "r2.json").write_text('{"i": "old"}')
    proc = _run_writer(during, "2:partial")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    names = sorted(p.name for p in during.iterdir())
    tmps = [n for n in names if n.endswith(".tmp")]
    # the target keeps its old content; the half-written bytes sit in a temporary beside it
    assert json.loads((during / "r2.json").read_text()) == {"i": "old"}
    assert json.loads((during / "r1.json").read_text())["i"] == 1
    assert len(tmps) == 1 and tmps[0].startswith(".r2.json.")
    assert 0 < (during / tmps[0]).stat().st_size < len('{"i": 2, "pad": ""}') + 5000
    with pytest.raises(ValueError):
        json.loads((during / tmps[0]).read_text())  # it is truly half-written
    # the next run clears it (its process is dead) and keeps a live process's temporaries
    live = during / f".r9.json.{os.getpid()}.abcd1234.tmp"
    live.write_text("in flight")
    assert runfiles.remove_stale_temporaries(during) == tmps
    assert sorted(p.name for p in during.iterdir()) == sorted([live.name, "r1.json", "r2.json"])
    for bad in ("two", "2:midway"):
        with pytest.raises(ValueError, match="N or N:partial"):
            os.environ[runfiles.FAULT_ENV] = bad
            try:
                runfiles.atomic_write_text(tmp_path / "x.json", "{}")
            finally:
                del os.environ[runfiles.FAULT_ENV]


def _blocked_by_chmod(folder) -> bool:
    """chmod 0o555 blocks writes, except for root (and some file systems)."""
    probe = folder / "probe"
    try:
        probe.write_text("x")
    except PermissionError:
        return True
    probe.unlink()
    return False


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder that cannot be written: chmod where that blocks this user, else (root) a
    simulated read-only file system (EROFS from every file or folder created in it)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if not _blocked_by_chmod(folder):
        real_open, real_mkdir = os.open, os.mkdir

        def ro_open(path, *a, **kw):
            if str(path).startswith(str(folder)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, *a, **kw)

        def ro_mkdir(path, *a, **kw):
            if str(path).startswith(str(folder)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *a, **kw)

        monkeypatch.setattr(os, "open", ro_open)
        monkeypatch.setattr(os, "mkdir", ro_mkdir)
    yield folder
    folder.chmod(0o755)


def _disk_with(monkeypatch, free_bytes):
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, 4096, st.f_blocks, st.f_bfree, free_bytes // 4096,
                                  st.f_files, st.f_ffree, st.f_favail, st.f_flag, st.f_namemax))

    monkeypatch.setattr(os, "statvfs", statvfs)


def test_preflight_names_the_problem_and_creates_nothing(tmp_path, read_only, monkeypatch):
    runfiles.preflight(tmp_path / "new" / "deeper", 1000, "the report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]  # the probe left nothing
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="notes.txt is a file, not a folder"):
        runfiles.preflight(a_file / "out", 0, "the report")
    for target in (read_only, read_only / "sub"):
        with pytest.raises(OutputError, match="is not writable") as e:
            runfiles.preflight(target, 0, "the report")
        assert "choose another output folder" in str(e.value) and "Errno" not in str(e.value)
    _disk_with(monkeypatch, 3 * runfiles.MiB)
    with pytest.raises(OutputError, match=r"about 1\.0 MiB needed .* 3\.0 MiB free"):
        runfiles.preflight(tmp_path, runfiles.MiB, "the report")
    with pytest.raises(OutputError, match="not enough free space"):
        runfiles.preflight(tmp_path, 0, "the report")  # below the margin kept free


def test_disk_full_while_writing_keeps_the_old_file_and_says_rerun(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    runfiles.atomic_write_text(path, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="is full .* rerun the same command") as e:
        runfiles.atomic_write_text(path, "new", "stored attacks.PGD")
    assert e.value.errno == errno.ENOSPC and "stored attacks.PGD" in str(e.value)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_entry_points_refuse_before_any_compute(tmp_path, read_only, monkeypatch, capsys):
    """The report, AutoAttack and the ablation runner fail on a bad output folder before they
    load (or train) a model, read data or attack."""
    from robustjax import cli
    from robustjax import experiments as E
    from robustjax.report import inputs

    def no_compute(*a, **kw):
        raise AssertionError("compute started before the output folder was checked")

    monkeypatch.setattr(inputs, "resolve_model", no_compute)
    monkeypatch.setattr(E.runner, "_load_data", no_compute)
    monkeypatch.setattr("robustjax.models.embedded_default", no_compute)
    toml = tmp_path / "e.toml"
    toml.write_text('[experiment]\nname = "e"\n[model]\nname = "mlp"\n[data]\ndataset = '
                    '"digits"\n[recipe]\nepochs = 1\n')
    a_file = tmp_path / "f"
    a_file.write_text("")
    for out in (read_only / "out", a_file / "out"):
        for argv in (["report", "--quick", "--out", str(out)],
                     ["autoattack", "--out", str(out / "aa.json")],
                     ["autoattack", "--out", str(tmp_path / "aa.json"), "--state",
                      str(out / "aa.npz")],
                     ["ablate", str(toml), "--out", str(out)]):
            assert cli.main(argv) == 2, argv
            err = capsys.readouterr().err
            assert f"robustjax {argv[0]}: error: cannot " in err, (argv, err)
    # the default model is trained only when its cache can take the weights
    from robustjax.models import default

    monkeypatch.setattr(default, "train_default", no_compute)
    monkeypatch.setenv("ROBUSTJAX_CACHE", str(read_only / "cache"))
    with pytest.raises(OutputError, match="cannot write the default model's cache"):
        default.embedded_default()
    _disk_with(monkeypatch, 2 * runfiles.MiB)
    assert cli.main(["report", "--quick", "--out", str(tmp_path / "rep")]) == 2
    assert "not enough free space for the report" in capsys.readouterr().err
    assert cli.main(["ablate", str(toml), "--out", str(tmp_path / "abl")]) == 2
    assert "not enough free space for the ablation 'e'" in capsys.readouterr().err
    assert cli.main(["autoattack", "--out", str(tmp_path / "aa.json")]) == 2
    assert "not enough free space for --out" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists() and not (tmp_path / "abl").exists()
