"""A hostile or careless repository against a real server on loopback: whatever a version's files
or its ``model.py`` do, that version fails with a reason naming its file, and the server and
every other model keep serving.

- Loading: a ``model.py`` whose ``Model()`` raises ``KeyboardInterrupt``, whose warm-up calls
  ``sys.exit()``, whose ``parameters`` or ``input_gradient`` property raises (the latter was read
  on the event loop), or whose ``close()`` raises after its warm-up failed: each version ends ``failed`` (not ``loading`` forever), naming ``model.py``
  and the exception; the server does not exit.
- Serving: a cheap ``model.py`` (its batches run on the event loop) whose ``predict`` calls
  ``sys.exit()`` on one row, and a generative one whose ``encode``, ``chat_prompt`` or
  ``logits`` does on one prompt: that request ends with ``internal`` naming the exception, the
  next requests are served.
- Outputs: an int64 result for an int32 output whose value int32 cannot hold fails its request
  with ``internal`` naming the value (it was wrapped around, a silently wrong answer).
- Undecodable file names: in a repository whose path holds byte 0xff (Python's ``\udcff``), a
  version that fails to load and a request whose model names a missing file fail with that path
  in the reason and the message, escaped, and ``models`` still lists every model (a lone surrogate
  made the list fail to encode, for every model: ``GET /v1/models`` answered 500).
- The layout: a symlink loop named like a model or a version (``is_dir()`` raises ``ELOOP``) is
  ignored and reported; the server starts, and under ``--reload`` later changes are still applied.
  Every ignored entry is logged once with the reason (``01/``, a version number of 16 digits), and
  so is a model with nothing to serve (no version directory, or a ``version_policy`` that selects
  none): the ``models`` list does not show it. A directory whose name holds a newline, ``ESC``,
  ``"`` or ``\\`` is logged on one line with them escaped (``\\x0A``...): it cannot forge a log line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.repo_models import AFFINE_CONFIG, affine, move_in, write_affine, write_py
from tests.repo_wire import models_http, predict, states, wait_models, wait_watching
from tests.support import Conn, ServerProcess
from wsserve.jsontypes import MAX_MESSAGE_CHARS

ROWS = [[1.0, 2.0, 3.0]]

#: name -> (model.py, what the failed version's reason says after the file's path)
LOAD_FAILURES = {
    "init-interrupt": ("""
        class Model:
            def __init__(self, version_dir):
                raise KeyboardInterrupt
            def predict(self, batch):
                return batch[:, :1]
        """, "raised KeyboardInterrupt"),
    "warmup-exit": ("""
        import sys
        class Model:
            def __init__(self, version_dir):
                pass
            def predict(self, batch):
                sys.exit(3)
        """, "SystemExit: 3"),
    "parameters-raise": ("""
        class Model:
            def __init__(self, version_dir):
                pass
            @property
            def parameters(self):
                raise RuntimeError("no parameters here")
            def predict(self, batch):
                return batch[:, :1]
        """, "RuntimeError: no parameters here"),
    "gradient-raises": ("""
        class Model:
            def __init__(self, version_dir):
                pass
            def predict(self, batch):
                return batch[:, :1]
            @property
            def input_gradient(self):
                raise RuntimeError("no gradient today")
        """, "Model.input_gradient raised RuntimeError: no gradient today"),
    "gradient-exits": ("""
        import sys
        class Model:
            def __init__(self, version_dir):
                pass
            def predict(self, batch):
                return batch[:, :1]
            @property
            def input_gradient(self):
                sys.exit(6)
        """, "Model.input_gradient raised SystemExit: 6"),
    "close-raises": ("""
        class Model:
            def __init__(self, version_dir):
                pass
            def predict(self, batch):
                raise ArithmeticError("warm-up refused")
            def close(self):
                raise RuntimeError("close refused")
        """, "warm-up failed: ArithmeticError: warm-up refused"),
}


#: Its batches run inline (flops_per_row 4): a row holding 5 calls sys.exit(4) on the event loop.
EXITS_PY = """
import sys

class Model:
    def __init__(self, version_dir):
        pass
    def predict(self, batch):
        if (batch == 5).any():
            sys.exit(4)
        return batch[:, :1]
    def flops_per_row(self):
        return 4
"""

#: Generative, its steps inline: encode("exit") calls sys.exit(5), chat_prompt of a message
#: "exit" sys.exit(6), logits of a context ending in "b" sys.exit(7); otherwise it says "aaa...".
GEN_EXITS_PY = """
import sys

import numpy as np

class Model:
    task = "generation"
    vocabulary = ["a", "b", "c"]
    context_len = 2
    def __init__(self, version_dir):
        pass
    def encode(self, prompt):
        if prompt == "exit":
            sys.exit(5)
        return [self.vocabulary.index(c) for c in prompt if c in self.vocabulary]
    def chat_prompt(self, messages):
        if messages[-1]["content"] == "exit":
            sys.exit(6)
        return messages[-1]["content"]
    def logits(self, contexts):
        if (contexts[:, -1] == 1).any():
            sys.exit(7)
        out = np.zeros((len(contexts), 3))
        out[:, 0] = 1.0
        return out
    def flops_per_row(self):
        return 1
"""


#: output_dtype int32, computed in int64: first value * 2**30 (2 -> 2**31, beyond int32).
WIDE_PY = """
import numpy as np

class Model:
    def __init__(self, version_dir):
        pass
    def predict(self, batch):
        return batch[:, :1].astype(np.int64) * 2**30
"""


#: A megabyte-long exception message: from predict when a row holds 5, from Model() in version 2.
LOUD_PY = """
class Model:
    def __init__(self, version_dir):
        if version_dir.name == "2":
            raise ValueError("y" * 1_000_000)
    def predict(self, batch):
        if (batch == 5).any():
            raise RuntimeError("x" * 1_000_000)
        return batch[:, :1]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    (root / "good").mkdir()
    (root / "good" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(root / "good" / "1", bias=1.0)
    for name, (source, _) in LOAD_FAILURES.items():
        (root / name).mkdir()
        (root / name / "config.toml").write_text(AFFINE_CONFIG)
        write_py(root / name / "1", source)
    (root / "exits").mkdir()
    (root / "exits" / "config.toml").write_text(AFFINE_CONFIG)
    write_py(root / "exits" / "1", EXITS_PY)
    (root / "wide").mkdir()
    (root / "wide" / "config.toml").write_text(AFFINE_CONFIG + 'output_dtype = "int32"\n')
    write_py(root / "wide" / "1", WIDE_PY)
    (root / "loud").mkdir()
    (root / "loud" / "config.toml").write_text(AFFINE_CONFIG + 'version_policy = "all"\n')
    write_py(root / "loud" / "1", LOUD_PY)
    write_py(root / "loud" / "2", LOUD_PY)
    (root / "genexits").mkdir()
    (root / "genexits" / "config.toml").write_text('task = "generation"\n')
    write_py(root / "genexits" / "1", GEN_EXITS_PY)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess("--models", "none", "--model-repository", str(repo)) as srv:
        yield srv


@pytest.mark.parametrize("name", sorted(LOAD_FAILURES))
async def test_model_code_that_raises_anything_while_loading_fails_its_version_only(
        server: ServerProcess, repo: Path, name: str) -> None:
    entry = wait_models(server, name, "version 1 failed", lambda e: e is not None and states(e) == {"1": "failed"})
    assert entry is not None
    reason = entry["versions"][0]["reason"]
    assert reason.startswith(f"{repo / name / '1' / 'model.py'}: "), reason
    assert LOAD_FAILURES[name][1] in reason, reason
    conn = await Conn.open(server.url)
    reply = await predict(conn, 1, "good", ROWS)
    await conn.close()
    assert reply["type"] == "result" and reply["outputs"] == affine(ROWS, 1.0), reply
    assert server.proc.poll() is None


async def test_a_cheap_predict_that_calls_sys_exit_fails_its_request_only(server: ServerProcess) -> None:
    conn = await Conn.open(server.url)
    bad = await predict(conn, "bad", "exits", [[5.0, 0.0, 0.0]])
    assert (bad["type"], bad["code"]) == ("error", "internal"), bad
    assert "model 'exits'" in bad["message"] and "SystemExit: 4" in bad["message"], bad
    ok = await predict(conn, "ok", "exits", [[1.0, 0.0, 0.0]])
    assert ok["type"] == "result" and ok["outputs"] == [[1.0]], ok
    await conn.close()
    assert server.proc.poll() is None


@pytest.mark.parametrize("fields, exit_status", [
    ({"prompt": "exit"}, 5),
    ({"messages": [{"role": "user", "content": "exit"}]}, 6),
    ({"prompt": "b"}, 7),
], ids=["encode", "chat_prompt", "logits"])
async def test_generative_model_code_that_calls_sys_exit_fails_its_request_only(
        server: ServerProcess, fields: dict[str, object], exit_status: int) -> None:
    conn = await Conn.open(server.url)
    await conn.send({"type": "generate", "id": "bad", "model": "genexits", "max_tokens": 3, **fields})
    _, bad = await conn.until_terminal("bad")
    assert (bad["type"], bad["code"]) == ("error", "internal"), bad
    assert f"SystemExit: {exit_status}" in bad["message"], bad
    await conn.send({"type": "generate", "id": "ok", "model": "genexits", "max_tokens": 3, "prompt": "c"})
    frames, ok = await conn.until_terminal("ok")
    await conn.close()
    assert ok["type"] == "done", ok
    assert "".join(f["text"] for f in frames if f["type"] == "token") == "aaa", frames
    assert server.proc.poll() is None


async def test_an_integer_output_beyond_its_declared_dtype_fails_instead_of_wrapping(server: ServerProcess) -> None:
    conn = await Conn.open(server.url)
    ok = await predict(conn, "ok", "wide", [[1.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    assert ok["type"] == "result" and ok["outputs"] == [[2**30], [-(2**31)]], ok
    bad = await predict(conn, "bad", "wide", [[2.0, 0.0, 0.0]])
    await conn.close()
    assert (bad["type"], bad["code"]) == ("error", "internal"), bad
    assert "output 'output' holds 2147483648, which does not fit its dtype int32" in bad["message"], bad


async def test_symlink_loops_in_the_repository_hide_nothing_else(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    (repo / "good").mkdir(parents=True)
    (repo / "good" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "good" / "1", bias=1.0)
    (repo / "loop").symlink_to(repo / "loop")  # a model name that loops
    (repo / "good" / "01").mkdir()
    (repo / "good" / "1234567890123456").mkdir()
    (repo / "empty").mkdir()
    (repo / "empty" / "config.toml").write_text(AFFINE_CONFIG)
    (repo / "unselected").mkdir()
    (repo / "unselected" / "config.toml").write_text(AFFINE_CONFIG + "version_policy = { specific = [5] }\n")
    write_affine(repo / "unselected" / "1", bias=1.0)
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--reload") as srv:
        wait_watching(srv, repo)
        (repo / "good" / "7").symlink_to(repo / "good" / "7")  # a version that loops
        write_affine(repo / "good" / ".2.tmp", bias=2.0)
        move_in(repo / "good" / ".2.tmp", repo / "good" / "2")
        wait_models(srv, "good", "version 2 served", lambda e: e is not None and e["version"] == "2")
        conn = await Conn.open(srv.url)
        reply = await predict(conn, 1, "good", ROWS)
        await conn.close()
        assert reply["type"] == "result" and reply["outputs"] == affine(ROWS, 2.0), reply
        log = srv.stderr_text()
    loop = "cannot be read (Too many levels of symbolic links)"
    number = "not a version number (a positive integer of at most 15 digits, without leading zeros)"
    for path, reason in ((repo / "loop", loop), (repo / "good" / "7", loop), (repo / "good" / "01", number),
                         (repo / "good" / "1234567890123456", number)):
        assert log.count(f"WARNING wsserve.registry: ignored {path}: {reason}\n") == 1, (path, log[-3000:])
    assert log.count(f"WARNING wsserve.registry: model 'empty' ({repo / 'empty'}) has no version directory "
                     "(1/, 2/, ...): nothing to serve\n") == 1, log[-3000:]
    assert log.count(f"WARNING wsserve.registry: model 'unselected' ({repo / 'unselected'}): version_policy selects "
                     "none of its versions (1): nothing to serve\n") == 1, log[-3000:]


def test_names_with_control_characters_are_logged_escaped_on_one_line(tmp_path: Path) -> None:
    """A directory name read from the repository is written into the log with its controls, ``"``
    and ``\\`` escaped as ``\\xHH`` (as the access log writes a request target): a version or model
    directory named with a newline cannot forge a log line, nor one with ``ESC`` drive a terminal."""
    repo = tmp_path / "repository"
    (repo / "good").mkdir(parents=True)
    (repo / "good" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "good" / "1", bias=1.0)
    forged = "2026-01-01 00:00:00,000 ERROR wsserve.registry: forged"
    names = {  # the entry (under good/ or the repository) -> how the log shows its name
        "good/2\n" + forged: "2\\x0A" + forged,
        "good/3\r\x1b[2K" + forged: "3\\x0D\\x1B[2K" + forged,
        "bad\nmodel": "bad\\x0Amodel",
        'q"uote\\d\u2028ir': "q\\x22uote\\x5Cd\\u2028ir",
    }
    for entry in names:
        (repo / entry).mkdir()
    number = "not a version number (a positive integer of at most 15 digits, without leading zeros)"
    model = "not a valid model name (1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit)"
    with ServerProcess("--models", "none", "--model-repository", str(repo)) as srv:
        assert states(models_http(srv)["good"]) == {"1": "ready"}
        log = srv.stderr_text()
    lines = log.splitlines()
    assert not [ln for ln in lines if "forged" in ln and "ignored" not in ln], log[-3000:]
    for entry, shown in names.items():
        parent, _, _ = entry.rpartition("/")
        where = repo / parent if parent else repo
        reason = number if parent else model
        line = f"WARNING wsserve.registry: ignored {where}/{shown}: {reason}"
        assert sum(ln.endswith(line) for ln in lines) == 1, (line, log[-3000:])


#: Reads ``later.txt`` of its version directory on a row holding 5 (there is none).
READS_LATER_PY = """
from pathlib import Path

class Model:
    def __init__(self, version_dir):
        self.later = Path(version_dir) / "later.txt"
    def predict(self, batch):
        if (batch == 5).any():
            self.later.read_text()
        return batch[:, :1]
"""


#: Model() reads ``weights.bin`` of its version directory (there is none).
MISSING_WEIGHTS_PY = """
from pathlib import Path

class Model:
    def __init__(self, version_dir):
        (Path(version_dir) / "weights.bin").read_bytes()
    def predict(self, batch):
        return batch[:, :1]
"""


async def test_a_path_with_an_undecodable_byte_in_a_reason_or_message_breaks_nothing(tmp_path: Path) -> None:
    repo = tmp_path / os.fsdecode(b"repo-\xff")
    shown = str(repo).replace("\udcff", "\\udcff")  # how JSON text shows it
    (repo / "good").mkdir(parents=True)
    (repo / "good" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "good" / "1", bias=1.0)
    (repo / "broken").mkdir()
    (repo / "broken" / "config.toml").write_text(AFFINE_CONFIG)
    write_py(repo / "broken" / "1", MISSING_WEIGHTS_PY)
    (repo / "later").mkdir()
    (repo / "later" / "config.toml").write_text(AFFINE_CONFIG)
    write_py(repo / "later" / "1", READS_LATER_PY)
    with ServerProcess("--models", "none", "--model-repository", str(repo)) as srv:
        listed = models_http(srv)  # 500 before: the failed version's reason holds the path
        assert states(listed["good"]) == {"1": "ready"} and states(listed["later"]) == {"1": "ready"}
        (version,) = listed["broken"]["versions"]
        assert version["state"] == "failed", version
        assert f"{shown}/broken/1/weights.bin" in version["reason"], version
        conn = await Conn.open(srv.url)
        bad = await predict(conn, "bad", "later", [[5.0, 0.0, 0.0]])
        assert (bad["type"], bad["code"]) == ("error", "internal"), bad
        assert f"No such file or directory: '{shown}/later/1/later.txt'" in bad["message"], bad
        ok = await predict(conn, "ok", "good", ROWS)
        assert ok["type"] == "result" and ok["outputs"] == affine(ROWS, 1.0), ok
        reply = await conn.request({"type": "models", "id": "m"})
        await conn.close()
    assert reply["type"] == "models" and {m["name"] for m in reply["models"]} == {"good", "broken", "later"}, reply


async def test_a_huge_exception_message_from_model_code_is_cut_in_errors_and_reasons(
        server: ServerProcess, repo: Path) -> None:
    """Nothing else bounds what a model's own exception says: an error frame quoting a 1 MB
    message, and the ``models`` entry of a version whose load raised one, are cut to
    MAX_MESSAGE_CHARS (they used to carry the whole megabyte, in every error of the model)."""
    entry = wait_models(server, "loud", "version 2 failed", lambda e: e is not None and states(e).get("2") == "failed")
    assert entry is not None
    reason = next(v["reason"] for v in entry["versions"] if v["version"] == "2")
    assert len(reason) <= MAX_MESSAGE_CHARS and reason.endswith(" more characters)"), reason[-200:]
    assert reason.startswith(f"{repo / 'loud' / '2' / 'model.py'}: ") and "yyyy" in reason
    conn = await Conn.open(server.url)
    await conn.send({"type": "predict", "id": "bad", "model": "loud", "version": 1, "inputs": [[5.0, 0.0, 0.0]]})
    _, bad = await conn.until_terminal("bad")
    ok = await predict(conn, "ok", "loud", [[1.0, 0.0, 0.0]])
    await conn.close()
    assert (bad["type"], bad["code"]) == ("error", "internal") and "xxxx" in bad["message"], bad["message"][:200]
    assert len(bad["message"]) <= MAX_MESSAGE_CHARS and bad["message"].endswith(" more characters)")
    assert ok["type"] == "result" and ok["outputs"] == [[1.0]], ok


#: config files whose numbers Python cannot hold as TOML's 64-bit integers or as floats, or turn into
#: text: name -> (file, its text, what the error says after the file's path).
HUGE_NUMBERS = {
    "huge-delay": ("config.toml", AFFINE_CONFIG + "max_delay_ms = " + "1" * 400 + "\n",
                   "key 'max_delay_ms': 1111111111"),
    "huge-hex": ("config.toml", AFFINE_CONFIG + "max_batch_size = 0x" + "f" * 4000 + "\n",
                 "key 'max_batch_size': an integer of 16000 bits; TOML integers are 64-bit"),
    "huge-digits": ("config.toml", 'task = "regression"\ninput_shape = [' + "9" * 5000 + "]\noutput_shape = [1]\n",
                    "is not valid TOML (an integer of more than 4300 digits; TOML integers are 64-bit)"),
    "huge-threads": ("config.pbtxt", 'parameters { key: "intra_op_thread_count" value { string_value: "'
                     + "9" * 5000 + '" } }\n', "key 'parameters.intra_op_thread_count': must be an integer in [0, 64]"),
}


async def test_a_config_holding_a_number_too_large_for_python_fails_that_model_only(tmp_path: Path) -> None:
    """A config.toml integer beyond 64 bits (an int of 400 digits in a float key overflowed a float;
    a 16000-bit hexadecimal one could not be shown in the message; 5000 decimal digits made tomllib
    raise ValueError) and a config.pbtxt ``intra_op_thread_count`` of 5000 digits escaped as
    exceptions that were not a ConfigError: the server did not start, and under ``--reload`` every
    later scan of the repository failed, so no change to any model was applied.  Each must fail its
    model only, naming the file and the key, at start-up, under --reload, on an admin load and in a
    load's ``config``."""
    repo = tmp_path / "repository"
    (repo / "good").mkdir(parents=True)
    (repo / "good" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "good" / "1", bias=1.0)
    for name, (file, text, _) in HUGE_NUMBERS.items():
        (repo / name).mkdir()
        (repo / name / file).write_text(text)
        write_affine(repo / name / "1", bias=1.0)
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--reload") as srv:
        conn = await Conn.open(srv.url)
        for name, (file, _, says) in HUGE_NUMBERS.items():
            await conn.send({"type": "load", "id": name, "model": name})
            _, reply = await conn.until_terminal(name)
            assert (reply["type"], reply["code"]) == ("error", "bad_request"), reply
            assert f"{repo / name / file}: {says}" in reply["message"], reply
            assert "set_int_max_str_digits" not in reply["message"], reply
        pbtxt = HUGE_NUMBERS["huge-threads"][1]
        await conn.send({"type": "load", "id": "cfg", "model": "good", "config": {"parameters": {
            "intra_op_thread_count": {"string_value": pbtxt.split('"')[3]}}}})
        _, reply = await conn.until_terminal("cfg")
        assert (reply["type"], reply["code"]) == ("error", "bad_request"), reply
        assert "key 'parameters.intra_op_thread_count': must be an integer in [0, 64]" in reply["message"], reply
        wait_watching(srv, repo)  # a scan of the repository still applies changes
        write_affine(repo / "good" / ".2.tmp", bias=2.0)
        move_in(repo / "good" / ".2.tmp", repo / "good" / "2")
        wait_models(srv, "good", "version 2 served", lambda e: e is not None and e["version"] == "2")
        reply = await predict(conn, 1, "good", ROWS)
        await conn.close()
        assert reply["type"] == "result" and reply["outputs"] == affine(ROWS, 2.0), reply
        log = srv.stderr_text()
    assert "Traceback" not in log, log[-3000:]
    for name, (file, _, says) in HUGE_NUMBERS.items():
        assert f"ERROR wsserve.registry: model '{name}': {repo / name / file}: {says}" in log, (name, log[-3000:])


async def test_an_onnx_graph_whose_input_has_a_dimension_fixed_at_zero_fails_to_load(tmp_path: Path) -> None:
    """Such a version was served (its dimension listed as -1, any size), then every request failed with
    ``internal`` (HTTP 500): ONNX Runtime refuses any size but 0, and wsserve any request of size 0.
    It fails at load, naming the file and the input; the other models serve."""
    pytest.importorskip("onnxruntime")
    from tests import onnx_builders as ob

    repo = tmp_path / "repository"
    (repo / "good").mkdir(parents=True)
    (repo / "good" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "good" / "1", bias=1.0)
    ob.save(ob.zero_dimension(["N", 0])[0], repo / "zero" / "1")
    with ServerProcess("--models", "none", "--model-repository", str(repo)) as srv:
        entry = models_http(srv)["zero"]
        conn = await Conn.open(srv.url)
        reply = await predict(conn, 1, "zero", [[1.0]])
        good = await predict(conn, 2, "good", ROWS)
        await conn.close()
    assert states(entry) == {"1": "failed"}, entry
    assert entry["versions"][0]["reason"].startswith(f"{repo / 'zero' / '1' / 'model.onnx'}: input 'x' has a "
                                                     "dimension fixed at 0"), entry
    assert (reply["type"], reply["code"]) == ("error", "unknown_model"), reply
    assert good["type"] == "result" and good["outputs"] == affine(ROWS, 1.0), good


async def test_a_model_file_that_is_not_a_regular_file_is_named_in_the_reason(tmp_path: Path) -> None:
    """A model.onnx that is a FIFO, a model.py that is a directory, a model.npz linked to a device or
    to nothing: the version failed saying its directory "holds no model file" (or "there is no
    model.py"), though the file is there.  The reason names the file and what it is; no load
    opens it (a FIFO would hold the load up), and the other models serve."""
    repo = tmp_path / "repository"
    (repo / "good").mkdir(parents=True)
    (repo / "good" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "good" / "1", bias=1.0)
    files = {"fifo": ("model.onnx", "a FIFO"), "folder": ("model.py", "a directory"),
             "device": ("model.npz", "a character device"),
             "dangling": ("model.onnx", "a symlink that cannot be followed (No such file or directory)"),
             "chosen": ("model.py", "a FIFO")}  # config.toml names the backend
    for name, (file, _) in files.items():
        version = repo / name / "1"
        version.mkdir(parents=True)
        path = version / file
        if name in ("fifo", "chosen"):
            os.mkfifo(path)
        elif name == "folder":
            path.mkdir()
        else:
            path.symlink_to("/dev/null" if name == "device" else version / "missing.onnx")
    (repo / "chosen" / "config.toml").write_text(AFFINE_CONFIG + 'backend = "python"\n')
    with ServerProcess("--models", "none", "--model-repository", str(repo)) as srv:
        listed = models_http(srv)
        conn = await Conn.open(srv.url)
        good = await predict(conn, 1, "good", ROWS)
        await conn.close()
    assert good["type"] == "result" and good["outputs"] == affine(ROWS, 1.0), good
    for name, (file, what) in files.items():
        entry = listed[name]
        assert states(entry) == {"1": "failed"}, entry
        assert entry["versions"][0]["reason"] == (f"{repo / name / '1'}: {file} is {what}, not a regular file: a "
                                                  "model file cannot be read from it"), entry


def _link(name: str, step: str) -> str:
    """An ensemble's config.pbtxt: one step on ``step`` (the affine model.py's tensors, float64)."""
    return (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\n'
            'input [ { name: "input" data_type: TYPE_FP64 dims: [ 3 ] } ]\n'
            'output [ { name: "output" data_type: TYPE_FP64 dims: [ 1 ] } ]\n'
            f'ensemble_scheduling {{ step [ {{ model_name: "{step}" model_version: -1 '
            'input_map { key: "input" value: "input" } output_map { key: "output" value: "output" } } ] }\n')


async def test_ensembles_nested_too_deeply_fail_naming_the_chain_and_the_others_serve(tmp_path: Path) -> None:
    """A chain of 250 ensembles, each a step of the one before, down to a model.py: a request to the
    top one never got a terminal frame (its answer passed back up each level in one call stack:
    RecursionError), and a chain of 1000 made the cycle check raise RecursionError while planning.
    An ensemble nesting more than MAX_ENSEMBLE_DEPTH levels fails, naming the chain; one within
    the bound serves."""
    from wsserve.repository.ensemble_plan import MAX_ENSEMBLE_DEPTH

    n = 250
    repo = tmp_path / "repository"
    (repo / "good").mkdir(parents=True)
    (repo / "good" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "good" / "1", bias=1.0)
    for i in range(n):
        (repo / f"e{i:03d}" / "1").mkdir(parents=True)
        (repo / f"e{i:03d}" / "config.pbtxt").write_text(_link(f"e{i:03d}", f"e{i + 1:03d}" if i + 1 < n else "good"))
    deepest_ok = n - MAX_ENSEMBLE_DEPTH  # e{n-64} ... e{n-1}: 64 ensembles, then the model
    with ServerProcess("--models", "none", "--model-repository", str(repo)) as srv:
        listed = models_http(srv)
        conn = await Conn.open(srv.url)
        top = await predict(conn, 1, "e000", ROWS)
        ok = await predict(conn, 2, f"e{deepest_ok:03d}", ROWS)
        await conn.close()
        log = srv.stderr_text()
    assert "Traceback" not in log, log[-3000:]
    assert (top["type"], top["code"]) == ("error", "unknown_model"), top
    assert ok["type"] == "result" and ok["outputs"] == affine(ROWS, 1.0), ok
    assert states(listed[f"e{deepest_ok:03d}"]) == {"1": "ready"}, listed[f"e{deepest_ok:03d}"]
    too_deep = listed[f"e{deepest_ok - 1:03d}"]
    assert states(too_deep) == {"1": "failed"}, too_deep
    assert (f"ensemble 'e{deepest_ok - 1:03d}': nests ensembles {MAX_ENSEMBLE_DEPTH + 1} levels deep "
            f"(e{deepest_ok - 1:03d} -> e{deepest_ok:03d} -> e{deepest_ok + 1:03d} -> ... -> e{n - 1:03d}); "
            f"at most {MAX_ENSEMBLE_DEPTH}") in too_deep["versions"][0]["reason"], too_deep
