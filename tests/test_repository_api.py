"""Pins the public API of wsserve.repository and its import layering."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import wsserve.repository as repository

REPO = Path(__file__).resolve().parents[1]

PUBLIC = [
    "RepositoryModel", "Batch", "TensorSpec", "DTYPES", "check_outputs",
    "ModelConfig", "TensorConfig", "VersionPolicy", "parse_config", "load_config",
    "RepositoryError", "ConfigError", "ModelLoadError",
    "convert_inputs", "check_inputs", "batch_rows",
    "CONFIG_FILE", "MODEL_FILES", "is_model_name", "find_model_file", "load_version",
    "ARCHITECTURES", "NpzContents", "read_npz", "save_npz_model", "write_builtin_version",
    "VersionState", "parse_version", "select_versions", "default_version",
    "Ignored", "VersionScan", "ModelScan", "RepositoryScan", "scan",
    "Action", "LoadVersion", "ReloadVersion", "UnloadVersion", "ReloadModel", "RemoveModel", "ReportError", "plan",
]


def test_all_is_pinned() -> None:
    assert sorted(repository.__all__) == sorted(PUBLIC)
    assert len(set(repository.__all__)) == len(repository.__all__)
    for name in repository.__all__:
        assert getattr(repository, name) is not None, name


def test_importing_the_package_loads_no_backend_library_nor_server_code() -> None:
    code = (
        "import sys, wsserve.repository; "
        "bad = [m for m in ('onnxruntime', 'onnx', 'sklearn', 'websockets', 'asyncio', 'wsserve.server', 'wsserve.pool') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
