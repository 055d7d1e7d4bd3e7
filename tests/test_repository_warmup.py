"""A warm-up whose outputs are not finite (NaN, an infinity), on a real server: the version is
served, with a warning naming the output, the value and the row.

A model that divides by a sum or a norm gives NaN for the warm-up's rows of zeros and is right for
every other row: refusing it would refuse a good model.  The server refuses to send an output row
that is not finite (``invalid_input`` for that request only), so a model broken everywhere fails
its own requests, and the log said why from the start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import wsserve
from tests.repo_models import AFFINE_CONFIG, write_affine, write_py
from tests.support import Conn

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

BROKEN_PY = NAN_PY.replace("batch[:, :1] / batch[:, :1].sum()", "batch[:, :1] * np.nan")


async def test_a_version_whose_warm_up_gives_nan_is_served_with_a_warning(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "m" / "1", bias=1.0)
    write_py(repo / "m" / "2", NAN_PY)
    (repo / "broken").mkdir()
    (repo / "broken" / "config.toml").write_text(AFFINE_CONFIG)
    write_py(repo / "broken" / "1", BROKEN_PY)
    server = wsserve.Server(wsserve.ServerConfig(port=0, models=(), model_repository=(repo,)))
    with caplog.at_level(logging.WARNING, logger="wsserve.repository"):
        await server.start()
    try:
        warnings = sorted(r.getMessage() for r in caplog.records if "warm-up output" in r.getMessage())
        assert len(warnings) == 2, warnings
        assert warnings[0].startswith(f"{repo / 'broken' / '1' / 'model.py'}: warm-up output 'output' has NaN at row 0")
        assert warnings[1].startswith(f"{repo / 'm' / '2' / 'model.py'}: warm-up output 'output' has NaN at row 0, "
                                      "element [0] (the warm-up batch is 2 rows of zeros)")
        conn = await Conn.open(server.url)
        reply = await conn.request({"type": "models", "id": "m"})
        states = {e["name"]: {v["version"]: v["state"] for v in e["versions"]} for e in reply["models"]}
        assert states == {"m": {"1": "ready", "2": "ready"}, "broken": {"1": "ready"}}, states
        r = await conn.request({"type": "predict", "id": 1, "model": "m", "inputs": ROWS})
        assert (r["type"], r["version"], r["outputs"]) == ("result", "2", [[1.0]]), r  # x0 / sum(x0 over the batch)
        r = await conn.request({"type": "predict", "id": 2, "model": "broken", "inputs": ROWS})
        assert (r["type"], r["code"]) == ("error", "invalid_input") and "not finite" in r["message"], r
        r = await conn.request({"type": "predict", "id": 3, "model": "m", "inputs": ROWS})
        assert r["type"] == "result", r  # the failure stayed in its request
        await conn.ws.close()
    finally:
        await server.drain(timeout_s=5)
        await server.close()


def test_an_in_process_function_whose_warm_up_gives_inf_is_served_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    model = wsserve.FunctionModel(lambda x: x[:, :1] - np.inf, input_shape=(2,), output_shape=(1,), name="neg")
    with caplog.at_level(logging.WARNING, logger="wsserve.repository"):
        wsserve.Server(wsserve.ServerConfig(port=0, models=()), models={"neg": model})
    assert any("warm-up output 'output' has -inf at row 0, element [0]" in r.getMessage() for r in caplog.records)
