import json
from pathlib import Path

import numpy as np


class Model:
    task = "regression"                                  # optional; config.toml's task wins

    def __init__(self, version_dir: Path):
        w = json.loads((version_dir / "weights.json").read_text())
        self.w = np.asarray(w, dtype=np.float64)[:, None]   # [3, 1]
        self.parameters = self.w.size                    # optional, reported in `models`
        self.metrics = {"r2": 0.93}                      # optional, reported in `models`

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return batch @ self.w                            # [n, 3] -> [n, 1]

    def flops_per_row(self) -> int:                      # optional; default 10⁹ ("unknown": always in a thread)
        return 3

    def input_gradient(self, x, target):                # optional: makes "explain": true work
        return np.broadcast_to(self.w[:, 0], x.shape)    # d predict(x)[i, target[i]] / d x[i]: [n, 3]

    def close(self) -> None:                             # optional; called when the version is unloaded
        pass
