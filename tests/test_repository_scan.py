"""Repository scans and hot-reload plans (wsserve.repository.scan / plan)."""

from __future__ import annotations

import importlib
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

from wsserve.repository import (
    Ignored,
    LoadVersion,
    ReloadModel,
    ReloadVersion,
    RemoveModel,
    ReportError,
    UnloadVersion,
    plan,
    scan,
)


def _version(repo: Path, model: str, version: str, *files: str) -> Path:
    vdir = repo / model / version
    vdir.mkdir(parents=True)
    for f in files or ("model.onnx",):
        (vdir / f).write_bytes(b"not loaded by scan")
    return vdir


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    for v in ("1", "2", "10"):
        _version(r, "a", v)
    (r / "a" / "config.toml").write_text('task = "regression"\n')
    # junk inside a model dir
    _version(r, "a", ".hidden")
    _version(r, "a", "3.tmp")
    _version(r, "a", "07")
    _version(r, "a", "0")
    (r / "a" / "notes.txt").write_text("x")
    (r / "a" / "5").write_text("a file, not a directory")
    # a model with a bad config
    _version(r, "b", "1")
    (r / "b" / "config.toml").write_text("max_batch_size = -4\n")
    # a model without config; one version ambiguous, one empty, one fine
    _version(r, "c", "1", "model.npz", "model.py")
    (r / "c" / "2").mkdir()
    _version(r, "c", "3", "model.py")
    # junk at the top
    (r / "README.md").write_text("hi")
    (r / ".git").mkdir()
    (r / "bad name!").mkdir()
    return r


def test_scan_reports_everything_where_it_is(repo: Path) -> None:
    s = scan(repo)
    assert s.error is None and s.names == ("a", "b", "c")
    assert s.ignored == (
        Ignored(repo / ".git", "hidden"),
        Ignored(repo / "README.md", "not a directory (a model is a directory)"),
        Ignored(repo / "bad name!", "not a valid model name (1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit)"),
    )
    a = s.model("a")
    assert a is not None and a.error is None and a.config is not None and a.config.task == "regression"
    assert [v.version for v in a.versions] == [1, 2, 10]  # numeric order: 10 > 2
    assert all(v.backend == "onnx" and v.error is None and len(v.fingerprint) == 64 for v in a.versions)
    assert a.selected == (1, 2, 10)
    not_version = "not a version number (a positive integer of at most 15 digits, without leading zeros)"
    assert {(i.path.name, i.reason) for i in a.ignored} == {
        (".hidden", "hidden"), ("0", not_version), ("07", not_version), ("3.tmp", not_version),
        ("notes.txt", not_version), ("5", "a version must be a directory"),
    }

    b = s.model("b")
    assert b is not None and b.config is None and b.selected == ()
    assert b.error == f"{repo / 'b' / 'config.toml'}: key 'max_batch_size': must be in [0, 65536], got -4"

    c = s.model("c")
    assert c is not None and c.error is None
    v1, v2, v3 = c.versions
    assert v1.error == f"{v1.path}: holds several model files (model.npz, model.py); choose one with backend = \"...\" in config.toml"
    assert v2.error == f"{v2.path}: holds no model file (model.onnx, model.npz, model.py)"
    assert v3.error is None and v3.backend == "python"
    assert c.loadable == (3,)
    assert c.selected == (1, 2, 3)  # the policy counts every version dir: loading 1 and 2 fails, reported then


def test_config_backend_resolves_an_ambiguous_version(repo: Path) -> None:
    (repo / "c" / "config.toml").write_text('backend = "npz"\n')
    c = scan(repo).model("c")
    assert c is not None and c.versions[0].backend == "npz" and c.versions[0].error is None
    assert c.versions[2].error == f"{c.versions[2].path}: config.toml says backend = 'npz' but there is no model.npz"


def test_missing_repository(tmp_path: Path) -> None:
    s = scan(tmp_path / "nope")
    assert s.models == () and s.error is not None and s.error.startswith(f"{tmp_path / 'nope'}: cannot be listed")
    assert plan(None, s) == [ReportError(None, None, s.error)]


def test_initial_plan(repo: Path) -> None:
    s = scan(repo)
    assert plan(None, s) == [
        LoadVersion("a", 1, repo / "a" / "1"),
        LoadVersion("a", 2, repo / "a" / "2"),
        LoadVersion("a", 10, repo / "a" / "10"),
        ReportError("b", None, s.model("b").error),  # type: ignore[union-attr, arg-type]
        LoadVersion("c", 1, repo / "c" / "1"),  # fails to load, with the scan's message
        LoadVersion("c", 2, repo / "c" / "2"),
        LoadVersion("c", 3, repo / "c" / "3"),
    ]


def test_no_change_no_action(repo: Path) -> None:
    assert plan(scan(repo), scan(repo)) == []


def test_version_moved_in_by_rename_is_loaded(repo: Path, tmp_path: Path) -> None:
    before = scan(repo)
    staging = _version(tmp_path, "staging", "x")
    os.rename(staging, repo / "a" / "11")
    assert plan(before, scan(repo)) == [LoadVersion("a", 11, repo / "a" / "11")]


def test_removed_version_is_unloaded(repo: Path) -> None:
    before = scan(repo)
    shutil.rmtree(repo / "a" / "2")
    assert plan(before, scan(repo)) == [UnloadVersion("a", 2, "removed")]


def test_latest_policy_loads_before_it_unloads(repo: Path) -> None:
    (repo / "a" / "config.toml").write_text('version_policy = "latest"\n')
    before = scan(repo)
    assert before.model("a").selected == (10,)  # type: ignore[union-attr]
    _version(repo, "a", "11")
    assert plan(before, scan(repo)) == [LoadVersion("a", 11, repo / "a" / "11"), UnloadVersion("a", 10, "policy")]


def test_new_version_fixed_after_a_failed_load_is_retried(repo: Path) -> None:
    (repo / "a" / "config.toml").write_text("version_policy = { latest = 1 }\n")
    before = scan(repo)
    (repo / "a" / "11").mkdir()  # no model file yet: loading it fails, 10 keeps serving (unload waits for a ready one)
    after = scan(repo)
    assert after.model("a").versions[-1].error is not None  # type: ignore[union-attr]
    assert plan(before, after) == [LoadVersion("a", 11, repo / "a" / "11"), UnloadVersion("a", 10, "policy")]
    assert plan(after, scan(repo)) == []
    (repo / "a" / "11" / "model.onnx").write_bytes(b"now")
    assert plan(after, scan(repo)) == [ReloadVersion("a", 11, repo / "a" / "11")]


def test_changed_config_reloads_the_model(repo: Path) -> None:
    before = scan(repo)
    (repo / "a" / "config.toml").write_text('task = "regression"\nmax_batch_size = 8\n')
    assert plan(before, scan(repo)) == [ReloadModel("a", (1, 2, 10))]


def test_same_config_bytes_rewritten_is_no_change(repo: Path) -> None:
    before = scan(repo)
    (repo / "a" / "config.toml").write_text('task = "regression"\n')
    assert plan(before, scan(repo)) == []


def test_config_broken_then_fixed(repo: Path) -> None:
    before = scan(repo)
    config = repo / "a" / "config.toml"
    config.write_text("max_batch_size = 'eight'\n")
    broken = scan(repo)
    assert plan(before, broken) == [
        ReportError("a", None, f"{config}: key 'max_batch_size': must be an integer in [0, 65536], got a string")
    ]  # nothing unloaded: the old config keeps serving
    assert plan(broken, scan(repo)) == []
    config.write_text("max_batch_size = 8\n")
    assert plan(broken, scan(repo)) == [ReloadModel("a", (1, 2, 10))]


def test_config_removed_reloads_with_defaults(repo: Path) -> None:
    before = scan(repo)
    (repo / "a" / "config.toml").unlink()
    after = scan(repo)
    assert after.model("a").config_fingerprint == "absent"  # type: ignore[union-attr]
    assert plan(before, after) == [ReloadModel("a", (1, 2, 10))]


def test_files_changed_in_place_reload_the_version(repo: Path) -> None:
    before = scan(repo)
    model_file = repo / "a" / "2" / "model.onnx"
    model_file.write_bytes(b"new weights, new size")
    assert plan(before, scan(repo)) == [ReloadVersion("a", 2, repo / "a" / "2")]
    # same size, new mtime
    before = scan(repo)
    st = model_file.stat()
    os.utime(model_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert plan(before, scan(repo)) == [ReloadVersion("a", 2, repo / "a" / "2")]


def test_hidden_files_in_a_version_do_not_count(repo: Path) -> None:
    before = scan(repo)
    (repo / "a" / "2" / ".model.onnx.swp").write_bytes(b"editor")
    (repo / "a" / "2" / "__pycache__").mkdir()
    assert plan(before, scan(repo)) == []


def test_version_losing_its_file_is_reloaded_then_unloaded_when_removed(repo: Path) -> None:
    before = scan(repo)
    (repo / "a" / "2" / "model.onnx").unlink()
    during = scan(repo)
    assert during.model("a").version(2).error is not None  # type: ignore[union-attr]
    # reload fails (no model file): the instance loaded before keeps serving
    assert plan(before, during) == [ReloadVersion("a", 2, repo / "a" / "2")]
    shutil.rmtree(repo / "a" / "2")
    assert plan(during, scan(repo)) == [UnloadVersion("a", 2, "removed")]


def test_model_added_and_removed(repo: Path) -> None:
    before = scan(repo)
    _version(repo, "d", "4")
    shutil.rmtree(repo / "c")
    assert plan(before, scan(repo)) == [RemoveModel("c"), LoadVersion("d", 4, repo / "d" / "4")]


def test_bad_model_does_not_hide_the_others(repo: Path) -> None:
    (repo / "a" / "config.toml").write_bytes(b"\xff not utf-8")
    s = scan(repo)
    assert s.model("a").error is not None and "is not UTF-8" in s.model("a").error  # type: ignore[union-attr, operator]
    assert [a.model for a in plan(None, s)] == ["a", "b", "c", "c", "c"]
    assert plan(None, s)[:2] == [ReportError("a", None, s.model("a").error), ReportError("b", None, s.model("b").error)]  # type: ignore[union-attr, arg-type]


def test_symlink_loops_are_ignored_not_raised(repo: Path) -> None:
    """A symlink loop named like a model or a version: ``is_dir()`` raises ELOOP; scan raised it,
    so one loop anywhere stopped the server from starting (and every --reload rescan)."""
    (repo / "loop").symlink_to(repo / "loop")
    (repo / "a" / "7").symlink_to(repo / "a" / "7")
    s = scan(repo)
    assert s.error is None and s.names == ("a", "b", "c")
    assert Ignored(repo / "loop", "cannot be read (Too many levels of symbolic links)") in s.ignored
    a = s.model("a")
    assert a is not None and a.loadable == (1, 2, 10)
    assert Ignored(repo / "a" / "7", "cannot be read (Too many levels of symbolic links)") in a.ignored


def test_a_version_directory_that_cannot_be_searched_is_an_error_of_that_version(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory that may be listed but not searched (``chmod -R 644``; a server not run as root):
    ``Path.is_file()`` of its model file raises PermissionError, which escaped scan, so the server did
    not start (and no --reload rescan applied anything any more).  Root is never refused: faked here."""
    blocked = repo / "a" / "2"
    is_file = Path.is_file

    def refusing(self: Path) -> bool:
        if self.parent == blocked:
            raise PermissionError(13, "Permission denied", str(self))
        return is_file(self)

    monkeypatch.setattr(Path, "is_file", refusing)
    s = scan(repo)
    a = s.model("a")
    assert a is not None and a.loadable == (1, 10)
    assert a.version(2).error == f"{blocked}: cannot be read (Permission denied)"  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["scan", "load_config"])
def test_a_config_toml_that_is_a_fifo_is_an_error_not_a_hang(repo: Path, how: str) -> None:
    """Opening a FIFO for reading waits for a writer: the scan (and with it every hot reload and
    admin operation) would wait forever.  It is refused as not a regular file."""
    from concurrent.futures import ThreadPoolExecutor

    from wsserve.repository import ConfigError, load_config

    path = repo / "a" / "config.toml"
    path.unlink()
    os.mkfifo(path)

    def run() -> str | None:
        if how == "scan":
            return scan(repo).model("a").error  # type: ignore[union-attr]
        with pytest.raises(ConfigError) as info:
            load_config(path)
        return str(info.value)

    pool = ThreadPoolExecutor(1)
    try:
        error = pool.submit(run).result(timeout=60)  # a hang guard, not a time bound
    finally:
        try:  # a read stuck on the FIFO (the test failed) ends when a writer comes and goes
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: nobody is reading it
            pass
        pool.shutdown(wait=False)
    assert error == f"{path}: cannot be read (not a regular file)"


def test_a_version_dir_with_too_many_files_is_an_error(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scan_mod = importlib.import_module("wsserve.repository.scan")  # the module (the package re-exports the function)
    monkeypatch.setattr(scan_mod, "MAX_VERSION_FILES", 3)
    for i in range(3):
        (repo / "a" / "1" / f"f{i}").write_text("x")
    a = scan_mod.scan(repo).model("a")
    assert a is not None and a.versions[0].error == f"{repo / 'a' / '1'}: more than 3 entries"
    assert a.loadable == (2, 10)


# --------------------------------------------------------------------------- property: the plan tracks the selection

MODELS = ("m", "n")
POLICIES = ('version_policy = "all"\n', 'version_policy = "latest"\n', "version_policy = { latest = 2 }\n",
            "version_policy = { specific = [1, 3] }\n", "max_batch_size = -1\n")
OPS = [(op, m, v) for op in ("add", "add_empty", "remove", "rewrite", "break") for m in MODELS for v in range(1, 5)]
OPS += [("config", m, i) for m in MODELS for i in range(len(POLICIES))] + [("remove_model", m, 0) for m in MODELS]


def _apply_fs(repo: Path, op: str, model: str, arg: int, counter: int) -> None:
    mdir, vdir = repo / model, repo / model / str(arg)
    if op == "add" and not vdir.exists():
        vdir.mkdir(parents=True)
        (vdir / "model.onnx").write_bytes(b"v")
    elif op == "add_empty" and not vdir.exists():
        vdir.mkdir(parents=True)
    elif op == "remove" and vdir.exists():
        shutil.rmtree(vdir)
    elif op == "rewrite" and (vdir / "model.onnx").exists():
        (vdir / "model.onnx").write_bytes(b"w" * (counter + 2))  # a new size: a new fingerprint
    elif op == "break" and (vdir / "model.onnx").exists():
        (vdir / "model.onnx").unlink()
    elif op == "config":
        mdir.mkdir(parents=True, exist_ok=True)
        (mdir / "config.toml").write_text(POLICIES[arg])
    elif op == "remove_model" and mdir.exists():
        shutil.rmtree(mdir)


@pytest.mark.parametrize("seed", range(40))
def test_executing_every_plan_holds_exactly_the_selected_versions(seed: int) -> None:
    """A seeded random walk of 30 repository edits; after each, a model adapter that executes the plan
    holds exactly the selected versions of every model with a valid config, and nothing else changes."""
    rng = random.Random(seed)
    steps = [rng.choice(OPS) for _ in range(30)]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        held: dict[str, set[int]] = {}
        previous = None
        for counter, (op, model, arg) in enumerate(steps):
            _apply_fs(repo, op, model, arg, counter)
            current = scan(repo)
            before = {k: set(v) for k, v in held.items()}
            for action in plan(previous, current):
                if isinstance(action, RemoveModel):
                    assert current.model(action.model) is None
                    held.pop(action.model, None)
                elif isinstance(action, ReloadModel):
                    held[action.model] = set(action.versions)
                elif isinstance(action, LoadVersion):
                    assert action.version not in held.get(action.model, set())
                    held.setdefault(action.model, set()).add(action.version)
                elif isinstance(action, ReloadVersion):
                    assert action.version in held[action.model]
                elif isinstance(action, UnloadVersion):
                    held[action.model].remove(action.version)
                    assert (action.reason == "removed") == (current.model(action.model).version(action.version) is None)  # type: ignore[union-attr]
                else:
                    assert isinstance(action, ReportError) and action.version is None
            walk = steps[: counter + 1]
            for m in MODELS:
                entry = current.model(m)
                if entry is None:
                    assert m not in held, walk
                elif entry.error is None:
                    assert held.get(m, set()) == set(entry.selected), walk
                else:  # bad config: whatever was held stays held
                    assert held.get(m) == before.get(m), walk
            previous = current


def test_scan_one_reads_one_model_as_the_whole_scan_lists_it(repo: Path) -> None:
    """An admin load reads its model's directory only (:func:`scan_one`), the same scan
    :func:`scan` makes of it (what the load plans against); None where scan lists no model."""
    from wsserve.repository.scan import scan_one

    whole = scan(repo)
    for name in whole.names:
        assert scan_one(repo, name) == whole.model(name)
    (repo / "plain_file").write_text("")
    (repo / ".hidden").mkdir()
    for name in ("nope", "plain_file", ".hidden", "..", "a/1", "x" * 65):
        assert scan_one(repo, name) is None
