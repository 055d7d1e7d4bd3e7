"""A hostile or careless repository against a real server on loopback: whatever a version's files
or its ``model.py`` do, that version fails with a reason naming its file, and the server and
every other model keep serving.

- Loading: a ``model.py`` whose ``Model()`` raises ``KeyboardInterrupt``, whose warm-up calls
  ``sys.exit()``, whose ``parameters`` property raises, or whose ``close()`` raises after its
  warm-up failed: each version ends ``failed`` (not ``loading`` forever), naming ``model.py``
  and the exception; the server does not exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.repo_models import AFFINE_CONFIG, affine, write_affine, write_py
from tests.repo_wire import predict, states, wait_models
from tests.support import Conn, ServerProcess

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
