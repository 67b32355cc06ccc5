"""The damaged-file battery: every kind of file a root holds, damaged every way, is detected
(with a message naming it), never trusted and never fatal to the root; every other run stays
byte-for-byte untouched. Plus the other robustness promises: one process per run (real
processes), files that respect the umask, and methods from another installed package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import checkpoint, store
from bench.cli import main
from bench.config import DataConfig, run_id
from bench.data import load_dataset
from bench.grid import GridRun
from bench.launch import plan, status
from bench.run import MODEL_FILE, load_final_model, run_folder, run_one
from bench.train import Interrupted
from tests.helpers import assert_identical, final_weights, tiny_config

DONE = [tiny_config("static", s, epochs=1) for s in (0.5, 0.9)]
PARTIAL = tiny_config("static", 0.7, epochs=2)
OTHER_PARTIAL = tiny_config("static", 0.6, epochs=2)
GRID = """
name = "d"
[axes]
models = ["mnist1d_cnn"]
datasets = ["mnist1d"]
methods = ["static"]
sparsities = [0.5, 0.9]
seeds = [0]
[train]
epochs = 1
batch_size = 50
[data]
train_subset = 600
"""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A root with two finished runs and two interrupted ones (checkpoint after epoch 1), the
    uninterrupted reference of the first interrupted run, and the data cache."""
    base = tmp_path_factory.mktemp("pristine")
    data = tmp_path_factory.getbasetemp() / "data"
    root = base / "root"
    for config in DONE:
        run_one(config, root, data)
    for config in (PARTIAL, OTHER_PARTIAL):
        with pytest.raises(Interrupted):
            run_one(config, root, data, stop_after_epoch=1)
    run_one(PARTIAL, base / "reference", data)
    return root, base / "reference", data


@pytest.fixture
def root(pristine, tmp_path):
    src, _, _ = pristine
    shutil.copytree(src, tmp_path / "root")
    return tmp_path / "root"


def snapshot(root: Path, skip: Path) -> dict[str, bytes]:
    """Every file of every run folder except `skip`'s, by path."""
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted((root / "runs").rglob("*"))
            if p.is_file() and skip not in p.parents and p.name != ".lock"}


def damage(path: Path, how: str, foreign: Path | None = None) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bit-flipped":
        # A byte in the middle: inside a tensor's storage for torch files, and for JSON a byte
        # of structure or value (we flip the first '{' so the damage is never silently valid).
        index = data.index(b"{") if path.suffix in (".json", ".jsonl") else len(data) // 2
        path.write_bytes(data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "foreign":
        shutil.copyfile(foreign, path)
    elif how == "wrong type":
        path.unlink()
        path.mkdir()
        (path / "junk").write_text("x")
    else:
        raise AssertionError(how)


WAYS = ("truncated", "bit-flipped", "empty", "foreign", "wrong type")


# --- result.json ----------------------------------------------------------------------------

RESULT_MESSAGES = {
    "truncated": "is not valid JSON",
    "bit-flipped": "is not valid JSON",
    "empty": "is empty",
    "foreign": "belongs to run",
    "wrong type": "is a directory, not a file",
}


@pytest.mark.parametrize("how", WAYS)
def test_damaged_result_is_corrupt_skipped_and_retrained(root, pristine, how, capsys):
    _, _, data = pristine
    victim = run_folder(root, DONE[0])
    others = snapshot(root, victim)
    damage(victim / store.RESULT, how, foreign=run_folder(root, DONE[1]) / store.RESULT)
    runs = [GridRun(c, "static") for c in DONE]

    states, _ = status(runs, root)
    assert [s.state for s in states] == ["corrupt", "done"]
    assert RESULT_MESSAGES[how] in states[0].detail
    capsys.readouterr()
    frame = store.load(root)  # report and check read through this
    assert list(frame["run_id"]) == [run_id(DONE[1])]
    err = capsys.readouterr().err
    assert f"{victim / store.RESULT} {RESULT_MESSAGES[how]}" in err and "skipped" in err

    todo = plan(runs, root)
    assert [r.run_id for r in todo.order] == [run_id(DONE[0])]
    result = run_one(DONE[0], root, data)
    assert result["status"] == "ok" and result["run_id"] == run_id(DONE[0])
    assert "set aside as result.json.corrupt" in capsys.readouterr().err
    assert (victim / "result.json.corrupt").exists()
    assert snapshot(root, victim) == others


def test_damaged_results_through_the_cli_never_exit_with_a_traceback(root, tmp_path, capsys):
    grid = tmp_path / "d.toml"
    grid.write_text(GRID)
    damage(run_folder(root, DONE[0]) / store.RESULT, "truncated")
    (root / "runs" / "junk").mkdir()
    (root / "runs" / "junk" / store.RESULT).write_text("[1, 2")
    assert main(["status", str(grid), "--root", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("corrupt ") and out[1].startswith("done ")
    assert out[-1] == "1 done, 0 failed, 0 partial, 1 corrupt, 0 missing"
    assert main(["report", "--root", str(root), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert sorted(line.split(" ")[2].split("/")[-2] for line in err) == sorted(
        [run_folder(root, DONE[0]).name, "junk"])
    assert all(line.startswith("sparsebench: warning: ") for line in err)


# --- model.pt -------------------------------------------------------------------------------

MODEL_MESSAGES = {
    "truncated": "is 15135 bytes, its result recorded 30271",
    "bit-flipped": "does not match the SHA-256 its result recorded",
    "empty": "is 0 bytes, its result recorded 30271",
    "foreign": "does not match the SHA-256 its result recorded",
    "wrong type": "is missing",
}


@pytest.mark.parametrize("how", WAYS)
def test_damaged_model_makes_its_run_not_done(root, pristine, how, capsys):
    _, _, data = pristine
    victim = run_folder(root, DONE[0])
    others = snapshot(root, victim)
    before = final_weights(root, DONE[0])
    damage(victim / MODEL_FILE, how, foreign=run_folder(root, DONE[1]) / MODEL_FILE)
    with pytest.raises(RuntimeError, match=f"cannot use run {run_id(DONE[0])}'s final model"):
        load_final_model(root, DONE[0])
    states, _ = status([GridRun(DONE[0], "static")], root)
    # status verifies size and SHA-256: a same-size flip or another run's model of the same
    # architecture is not done either.
    assert states[0].state == "corrupt"
    assert states[0].detail == f"{victim / MODEL_FILE} {MODEL_MESSAGES[how]}; a rerun trains " \
        "it again"
    assert [r.run_id for r in plan([GridRun(DONE[0], "static")], root).order] == \
        [run_id(DONE[0])]
    capsys.readouterr()
    result = run_one(DONE[0], root, data)
    err = capsys.readouterr().err
    assert f"{victim / MODEL_FILE}" in err and "set aside as model.pt.corrupt" in err
    assert result["status"] == "ok"
    assert_identical(final_weights(root, DONE[0]), before)  # retrained, bit-identical
    assert snapshot(root, victim) == others


def test_status_remembers_verified_models_until_they_change(root, capsys):
    """status hashes each finished model once; later calls reuse the digest while the file's
    identity (inode, size, mtime, ctime) holds, and a change in place is hashed again."""
    from bench.digests import CACHE, Digests

    runs = [GridRun(c, "static") for c in DONE]
    calls = []
    real = Digests.sha256

    def counting(self, path):
        before = self.hashed
        digest = real(self, path)
        calls.append(self.hashed - before)
        return digest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Digests, "sha256", counting)
        assert [s.state for s in status(runs, root)[0]] == ["done", "done"]
        assert calls == [1, 1] and (root / CACHE).is_file()
        calls.clear()
        assert [s.state for s in status(runs, root)[0]] == ["done", "done"]
        assert calls == [0, 0]  # both from the cache
        calls.clear()
        damage(run_folder(root, DONE[1]) / MODEL_FILE, "bit-flipped")
        assert [s.state for s in status(runs, root)[0]] == ["done", "corrupt"]
        assert calls == [0, 1]
    # A damaged cache is only a cache: ignored, and rewritten.
    (root / CACHE).write_text("{not json")
    assert [s.state for s in status(runs, root)[0]] == ["done", "corrupt"]
    assert set(json.loads((root / CACHE).read_text())) == {
        str((run_folder(root, c) / MODEL_FILE).relative_to(root)) for c in DONE}


def test_a_reused_run_with_a_damaged_model_is_planned_again(tmp_path, pristine):
    """EigenDamage loads its dense run's model.pt: a bit flip there (same size, so status's
    cheap check passes) makes the plan train the dense run again, first."""
    from methods.eigendamage.method import dense_config

    _, _, data = pristine
    eig = GridRun(tiny_config("eigendamage", 0.5, epochs=1), "eigendamage")
    dense = dense_config(eig.config)
    run_one(dense, tmp_path, data)
    assert [r.config.method.name for r in plan([eig], tmp_path).order] == ["eigendamage"]
    damage(run_folder(tmp_path, dense) / MODEL_FILE, "bit-flipped")
    todo = plan([eig], tmp_path)
    assert [r.config.method.name for r in todo.order] == ["dense", "eigendamage"]
    assert [r.run_id for r in todo.added] == [run_id(dense)]
    assert todo.waits_for[eig.run_id] == [run_id(dense)]


# --- checkpoint.pt, config.json, metrics.jsonl of an interrupted run -------------------------

CHECKPOINT_MESSAGES = {
    "truncated": "is truncated (44368 of 88881 payload bytes)",
    "bit-flipped": "does not match its checksum",
    "empty": "is empty",
    "foreign": f"belongs to run {run_id(OTHER_PARTIAL)}, not to run {run_id(PARTIAL)}",
    "wrong type": "is a directory, not a checkpoint",
}


@pytest.mark.parametrize("how", WAYS)
def test_damaged_checkpoint_is_set_aside_and_the_run_starts_over(root, pristine, how, capsys):
    _, reference, data = pristine
    victim = run_folder(root, PARTIAL)
    others = snapshot(root, victim)
    damage(victim / store.CHECKPOINT, how,
           foreign=run_folder(root, OTHER_PARTIAL) / store.CHECKPOINT)
    capsys.readouterr()
    result = run_one(PARTIAL, root, data)
    err = capsys.readouterr().err
    assert (f"{victim / store.CHECKPOINT}: {CHECKPOINT_MESSAGES[how]}; the run starts from "
            "scratch; set aside as checkpoint.pt.corrupt") in err
    assert "starting from scratch" in (victim / store.LOG).read_text()
    assert result["status"] == "ok"
    assert_identical(final_weights(root, PARTIAL), final_weights(reference, PARTIAL))
    assert snapshot(root, victim) == others


@pytest.mark.parametrize("name", [store.CONFIG, store.METRICS])
@pytest.mark.parametrize("how", WAYS)
def test_damaged_config_or_metrics_are_set_aside_and_rewritten(root, pristine, name, how,
                                                                capsys):
    _, reference, data = pristine
    victim = run_folder(root, PARTIAL)
    others = snapshot(root, victim)
    foreign = run_folder(root, OTHER_PARTIAL) / name
    damage(victim / name, how, foreign=foreign)
    capsys.readouterr()
    result = run_one(PARTIAL, root, data)
    err = capsys.readouterr().err
    if name == store.METRICS and how == "foreign":
        # Another run's metrics parse, but each line carries that run's id.
        assert (f"{victim / name}: belongs to run {run_id(OTHER_PARTIAL)}, not to run "
                f"{run_id(PARTIAL)} (copied here?); rewritten at the next epoch; set aside as "
                f"{name}.corrupt") in err
    else:
        assert f"{victim / name}: " in err and f"set aside as {name}.corrupt" in err
    assert result["status"] == "ok"
    # Resumed from the (intact) checkpoint: the same weights, and fresh, whole files.
    assert_identical(final_weights(root, PARTIAL), final_weights(reference, PARTIAL))
    assert (victim / name).read_bytes() == (run_folder(reference, PARTIAL) / name).read_bytes()
    assert snapshot(root, victim) == others


def _edit_value(path: Path, foreign: Path) -> None:
    """A damaged value that still parses: the first digit of top1 changed."""
    text = path.read_text()
    at = text.index('"top1": ') + len('"top1": ')
    path.write_text(text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:])


def _untagged_copy(path: Path, foreign: Path) -> None:
    """Another run's metrics without run ids (as written before lines carried them)."""
    lines = [json.loads(line) for line in foreign.read_text().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "run_id"}) + "\n"
                            for r in lines))


METRICS_MESSAGES = {
    "truncated": "line 1 is not valid JSON",
    "bit-flipped": "line 1 is not valid JSON",
    "empty": "is empty",
    "foreign": f"belongs to run {run_id(DONE[1])}, not to run {run_id(DONE[0])} (copied here?)",
    "wrong type": "is a directory, not a file",
    "edited value": "does not match the history its run's result recorded",
    "untagged foreign": "does not match the history its run's result recorded",
}


@pytest.mark.parametrize("how", list(METRICS_MESSAGES))
def test_damaged_metrics_of_a_finished_run_draw_no_curve(root, how, capsys):
    """The report's curves read metrics.jsonl: a damaged or foreign one (even one that parses)
    is set aside with a warning and draws no curve, so no run shows another run's numbers."""
    from bench.report import read_metrics

    victim = run_folder(root, DONE[0])
    path = victim / store.METRICS
    history = json.loads((victim / store.RESULT).read_text())["history"]
    assert read_metrics(victim) == history and len(history) == 1
    assert json.loads(path.read_text())["run_id"] == run_id(DONE[0])  # each line is tagged
    others = snapshot(root, victim)
    foreign = run_folder(root, DONE[1]) / store.METRICS
    {"edited value": _edit_value, "untagged foreign": _untagged_copy}.get(
        how, lambda p, f: damage(p, how, foreign=f))(path, foreign)
    capsys.readouterr()
    assert read_metrics(victim) == []
    assert capsys.readouterr().err == (
        f"sparsebench: warning: {path}: {METRICS_MESSAGES[how]}; its curve is left out; set "
        "aside as metrics.jsonl.corrupt\n")
    assert (victim / "metrics.jsonl.corrupt").exists() and not path.exists()
    assert read_metrics(victim) == [] and capsys.readouterr().err == ""
    assert snapshot(root, victim) == others


def test_report_with_a_foreign_metrics_file_warns_once_and_goes_on(root, tmp_path, capsys):
    shutil.copyfile(run_folder(root, DONE[1]) / store.METRICS,
                    run_folder(root, DONE[0]) / store.METRICS)
    assert main(["report", "--root", str(root), "--out", str(tmp_path / "rep"), "-q"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"sparsebench: warning: {run_folder(root, DONE[0]) / store.METRICS}: "
                   f"{METRICS_MESSAGES['foreign']}; its curve is left out; set aside as "
                   "metrics.jsonl.corrupt"]


# --- the data cache ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", WAYS)
def test_damaged_data_cache_is_named_and_regenerated(pristine, tmp_path, how, capsys):
    _, _, data = pristine
    cfg = DataConfig(name="mnist1d", num_samples=200)
    good = load_dataset(cfg, tmp_path)
    path = tmp_path / "mnist1d" / "mnist1d-n200-split0.8.pt"
    other = load_dataset(DataConfig(name="mnist1d", num_samples=100), tmp_path)
    assert len(other.train) == 80
    damage(path, how, foreign=tmp_path / "mnist1d" / "mnist1d-n100-split0.8.pt")
    capsys.readouterr()
    again = load_dataset(cfg, tmp_path)
    err = capsys.readouterr().err
    assert f"{path}: data cache " in err and "regenerating it; set aside as" in err
    for a, b in ((good.train, again.train), (good.test, again.test)):
        assert all(x.equal(y) for x, y in zip(a.tensors, b.tensors, strict=True))
    assert load_dataset(cfg, tmp_path) is not None and capsys.readouterr().err == ""


# --- stray and copied folders ----------------------------------------------------------------

def test_copied_and_stray_folders_are_reported_and_counted_once(root, capsys):
    shutil.copytree(run_folder(root, DONE[0]), root / "runs" / "backup")
    (root / "runs" / "junk").mkdir()
    (root / "runs" / "junk" / store.RESULT).write_text('{"status": "ok"}')
    (root / "runs" / "empty").mkdir()
    (root / "runs" / "notes.txt").write_text("not a run")
    capsys.readouterr()
    frame = store.load(root)
    assert sorted(frame["run_id"]) == sorted(run_id(c) for c in DONE)
    assert list(frame["path"]) == sorted(str(run_folder(root, c)) for c in DONE)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"sparsebench: warning: {root / 'runs' / 'junk' / store.RESULT} has no valid run_id: "
        "skipped (status says corrupt; run retrains it)",
        f"sparsebench: warning: {root / 'runs' / 'backup'} holds a copy of run "
        f"{run_id(DONE[0])} ({run_folder(root, DONE[0]).name}): a duplicate, counted once",
    ]


def test_temp_files_of_interrupted_writes_are_cleaned(root, pristine):
    _, _, data = pristine
    victim = run_folder(root, PARTIAL)
    leftover = victim / ".checkpoint.pt.abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    run_one(PARTIAL, root, data)
    assert not leftover.exists()
    assert sorted(p.name for p in victim.iterdir() if p.name.startswith(".")) in ([], [".lock"])


# --- files others can read --------------------------------------------------------------------

def test_written_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store.atomic_write_json(tmp_path / "a.json", {"x": 1})
        checkpoint.save(tmp_path / "run-0123456789ab" / "checkpoint.pt", {"x": 1})
        os.umask(0o077)
        store.atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "run-0123456789ab" / "checkpoint.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


# --- one process per run ----------------------------------------------------------------------

SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from bench.run import run_one
from tests.test_damaged import SLOW
t0 = time.time()
result = run_one(SLOW, Path(sys.argv[1]), Path(sys.argv[2]))
print("RESULT", result["top1"], round(t0, 3), flush=True)
"""
SLOW = tiny_config("static", 0.8, epochs=40)


def test_two_processes_train_a_run_once(tmp_path, pristine):
    _, _, data = pristine
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    root = tmp_path / "root"
    first = subprocess.Popen([sys.executable, "-c", SCRIPT, str(root), str(data)], cwd=repo,
                             env=env, stdout=subprocess.PIPE, text=True)
    folder = run_folder(root, SLOW)
    deadline = time.time() + 120
    while not (folder / store.LOG).exists() and time.time() < deadline:
        time.sleep(0.05)
    states, _ = status([GridRun(SLOW, "static")], root)
    assert states[0].state == "running" and states[0].detail == "training now"
    second = subprocess.Popen([sys.executable, "-c", SCRIPT, str(root), str(data)], cwd=repo,
                              env=env, stdout=subprocess.PIPE, text=True)
    out1, _ = first.communicate(timeout=300)
    out2, _ = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0
    assert "is being trained by another process" in out2 and "waiting" in out2
    top1 = [line.split()[1] for out in (out1, out2) for line in out.splitlines()
            if line.startswith("RESULT")]
    assert len(top1) == 2 and top1[0] == top1[1]
    log = (folder / store.LOG).read_text()
    assert log.count(f"run {run_id(SLOW)} on cpu") == 1  # trained once
    assert log.count("done: top1=") == 1
    states, _ = status([GridRun(SLOW, "static")], root)
    assert states[0].state == "done"


# --- methods from another package -------------------------------------------------------------

PLUGIN = '''
from methods.static import Static


class MyPrune(Static):
    """Static magnitude pruning under another name (a user's own method)."""

    name = "myprune"
'''


def install_plugin(target: Path) -> None:
    """A distribution installed the way pip leaves one: the package and its .dist-info with an
    entry point in the sparsebench.methods group."""
    (target / "myplugin").mkdir(parents=True)
    (target / "myplugin" / "__init__.py").write_text(PLUGIN)
    info = target / "myplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sparsebench.methods]\nmyprune = myplugin:MyPrune\n")


def test_a_method_from_another_package_trains_under_the_local_executor(tmp_path, pristine):
    _, _, data = pristine
    site = tmp_path / "site"
    install_plugin(site)
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.replace('["static"]', '["myprune"]').replace("[0.5, 0.9]", "[0.5]"))
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{site}"}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(grid), "--root",
                           str(tmp_path / "root"), "--data-root", str(data), "--jobs", "1",
                           "--no-report"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "root" / "runs").iterdir()
    result = json.loads((folder / store.RESULT).read_text())
    assert result["status"] == "ok" and result["config"]["method"]["name"] == "myprune"


def test_a_child_error_reaches_the_log_it_names(tmp_path, pristine, monkeypatch):
    """A method registered only in the launching process (not installed): the job cannot find
    it, and the log path in the failure holds the job's error."""
    from bench.launch import run_local
    from methods import REGISTRY
    from methods.static import Static

    _, _, data = pristine
    monkeypatch.setitem(REGISTRY, "onlyhere", type("OnlyHere", (Static,), {"name": "onlyhere"}))
    run = GridRun(tiny_config("onlyhere", 0.5, epochs=1), "onlyhere")
    (result,) = run_local([run], tmp_path / "root", data, jobs=1)
    assert result["status"] == "error"  # no result on disk: a plain rerun retries it
    assert "unknown method 'onlyhere'" in result["error"]
    log = Path(result["error"].rsplit("log: ", 1)[1])
    assert "unknown method 'onlyhere'" in log.read_text()
