"""A warm-up whose outputs are not finite (NaN, an infinity) fails the version, on a real server.

The server refuses to send an output row that is not finite (``invalid_input`` for that request),
so a model whose warm-up (a batch of zeros) gives one was served and then failed its requests;
now it is ``failed`` with the output, the value and the row, and what served before serves on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import wsserve
from tests.repo_models import AFFINE_CONFIG, affine, write_affine, write_py
from tests.support import Conn
from wsserve.repository import ModelLoadError

NAN_PY = """
import numpy as np


class Model:
    def __init__(self, version_dir):
        pass

    def predict(self, batch):
        with np.errstate(invalid="ignore"):
            return batch[:, :1] / batch[:, :1].sum()    # zeros: 0 / 0 = NaN
"""

ROWS = [[1.0, 2.0, 3.0]]


async def test_a_version_whose_warm_up_gives_nan_is_failed_and_the_previous_one_serves(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "m" / "1", bias=1.0)
    write_py(repo / "m" / "2", NAN_PY)
    server = wsserve.Server(wsserve.ServerConfig(port=0, models=(), model_repository=(repo,)))
    await server.start()
    try:
        conn = await Conn.open(server.url)
        reply = await conn.request({"type": "models", "id": "m"})
        (entry,) = reply["models"]
        assert entry["version"] == "1", entry
        failed = {v["version"]: v for v in entry["versions"]}["2"]
        assert failed["state"] == "failed", entry
        assert failed["reason"] == (f"{repo / 'm' / '2' / 'model.py'}: warm-up failed: output 'output' has NaN at row 0, "
                                    "element [0] (the warm-up batch is 2 rows of zeros)"), failed
        r = await conn.request({"type": "predict", "id": 1, "model": "m", "inputs": ROWS})
        assert (r["type"], r["version"], r["outputs"]) == ("result", "1", affine(ROWS, 1.0)), r
        await conn.ws.close()
    finally:
        await server.drain(timeout_s=5)
        await server.close()


def test_an_in_process_function_whose_warm_up_gives_inf_is_refused_before_serving() -> None:
    model = wsserve.FunctionModel(lambda x: x[:, :1] - np.inf, input_shape=(2,), output_shape=(1,), name="neg")
    with pytest.raises(ModelLoadError, match=r"warm-up failed: output 'output' has -inf at row 0, element \[0\]"):
        wsserve.Server(wsserve.ServerConfig(port=0, models=()), models={"neg": model})
