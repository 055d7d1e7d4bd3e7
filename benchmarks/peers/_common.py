"""Shared by the peer servers: the default models and their ``models`` listing."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def load_models() -> dict[str, Any]:
    """The same trained ``linear`` and ``mlp`` wsserve serves (from wsserve's weight cache when present)."""
    from wsserve.trainer import train_default_models

    return train_default_models(names=["linear", "mlp"])


def describe(models: dict[str, Any]) -> list[dict[str, Any]]:
    return [m.info.to_json() for m in models.values()]
