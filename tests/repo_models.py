"""model.py sources and repository-building helpers for the wire tests of the model repository.

Each ``*_PY`` string is a complete ``model.py`` (written into a version directory by
:func:`write_py`).  They read what they need from files of their version directory, so one
source serves several versions with different behaviour:

- :data:`AFFINE_PY`: ``[n, 3] -> [n, 1]``, ``x @ w + bias`` with ``w`` from ``weights.json``
  and ``bias`` from ``bias.txt`` (default 0); a test sets a different bias per version to
  see which version computed a reply.
- :data:`GATED_PY`: :data:`AFFINE_PY` that can be held: a row whose first value is ``-1``
  makes ``predict`` create ``<gate>.started`` and wait until ``<gate>`` exists (``gate.txt``
  holds the absolute path of ``<gate>``, outside the repository, so the version directory
  may be deleted while the work is held); ``init_gate.txt`` likewise holds ``Model()``
  itself until its gate exists (a version seen ``loading``).  Every wait gives up after
  60 s (raising), so a broken test cannot hang a server thread forever.
- :data:`BIGRAM_PY`: a generative model (``task = "generation"``): a bigram table over
  :data:`BIGRAM_VOCAB` drawn from ``seed.txt``; ``delay.txt`` (seconds) slows every step.
  :func:`bigram_table` and :func:`bigram_greedy` are the test's independent reference.
- :data:`WORDS_PY`: a generative model whose tokens are words (``"hello "``, ``"world "``,
  ``"stop"``) and single letters; ``encode`` takes the longest vocabulary entry at each
  position and drops other characters, and ``prompt_chars`` is 24.  Greedy, it continues
  ``hello -> world -> stop -> hello ...`` (after a letter or nothing: ``hello``);
  :func:`words_encode` is the test's copy of its tokenizer.
- :data:`NAMED_PY` (with :data:`NAMED_CONFIG`): named inputs ``a`` [2] and ``b`` [1], named
  outputs ``sum`` [1] (``a0 + a1 + b``) and ``scaled`` [2] (``a * b``).
- :data:`RAISES_PY`, :data:`WARMUP_FAILS_PY`, :data:`SYNTAX_ERROR_PY`: the failure modes.

:func:`write_client_repository` writes the repository the clients' tests serve (Python and JS:
``python -c 'from tests.repo_models import write_client_repository as w; w("DIR")'``).
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np

__all__ = [
    "AFFINE_PY", "GATED_PY", "BIGRAM_PY", "RAISES_PY", "WARMUP_FAILS_PY", "SYNTAX_ERROR_PY",
    "NAMED_PY", "NAMED_CONFIG", "WORDS_PY", "WORDS_VOCAB", "WORDS_PROMPT_CHARS", "words_encode",
    "AFFINE_CONFIG", "BIGRAM_CONFIG", "BIGRAM_VOCAB", "CLIENT_GEN_SEEDS",
    "write_client_repository", "BF16_CONFIG", "BF16_PY", "BF16_IN_CONFIG", "BF16_ID_PY", "write_py", "write_affine",
    "affine", "bigram_table",
    "bigram_greedy", "move_in", "remove_version",
]

AFFINE_CONFIG = 'task = "regression"\ninput_shape = [3]\noutput_shape = [1]\n'
BIGRAM_CONFIG = 'task = "generation"\n'
BIGRAM_VOCAB = "abcdefgh .\n"

AFFINE_PY = """
import json
from pathlib import Path

import numpy as np


class Model:
    def __init__(self, version_dir):
        d = Path(version_dir)
        self.w = np.asarray(json.loads((d / "weights.json").read_text()), dtype=np.float64)[:, None]
        bias = d / "bias.txt"
        self.bias = float(bias.read_text()) if bias.exists() else 0.0
        self.parameters = int(self.w.size) + 1
        self.metrics = {"bias": self.bias}

    def predict(self, batch):
        return batch @ self.w + self.bias      # [n, 3] -> [n, 1]

    def flops_per_row(self):
        return 4
"""

GATED_PY = """
import json
import time
from pathlib import Path

import numpy as np


def _wait(gate):
    Path(str(gate) + ".started").touch()
    end = time.monotonic() + 60
    while not gate.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{gate} never appeared")
        time.sleep(0.005)


class Model:
    def __init__(self, version_dir):
        d = Path(version_dir)
        init_gate = d / "init_gate.txt"
        if init_gate.exists():
            _wait(Path(init_gate.read_text().strip()))
        self.w = np.asarray(json.loads((d / "weights.json").read_text()), dtype=np.float64)[:, None]
        bias = d / "bias.txt"
        self.bias = float(bias.read_text()) if bias.exists() else 0.0
        self.gate = Path((d / "gate.txt").read_text().strip())

    def predict(self, batch):
        if (batch[:, 0] == -1).any():
            _wait(self.gate)
        return batch @ self.w + self.bias
"""

#: A generative (chat) model that writes the letters after the prompt's last one and fails at the
#: step after 'e' (a failure mid-generation: the Responses API's response.failed, gRPC's stream).
FAILS_AFTER_E_PY = """
import numpy as np

VOCAB = list("abcdefgh .\\n")


class Model:
    task = "generation"
    vocabulary = VOCAB
    context_len = 2

    def __init__(self, version_dir):
        self.parameters = 1

    def encode(self, prompt):
        return [VOCAB.index(c) for c in prompt if c in VOCAB]

    def logits(self, contexts):          # [B, 2] int64 -> [B, V]: the letter after the last one
        last = contexts[:, -1]
        if (last == VOCAB.index("e")).any():
            raise RuntimeError("no letter after e")
        out = np.full((len(last), len(VOCAB)), -10.0)
        out[np.arange(len(last)), np.minimum(last + 1, len(VOCAB) - 1)] = 10.0
        return out

    def chat_prompt(self, messages):
        return " ".join(m["content"] for m in messages)
"""


BIGRAM_PY = """
import time
from pathlib import Path

import numpy as np

VOCAB = list("abcdefgh .\\n")


class Model:
    task = "generation"
    vocabulary = VOCAB
    context_len = 2

    def __init__(self, version_dir):
        d = Path(version_dir)
        seed = int((d / "seed.txt").read_text())
        v = len(VOCAB)
        # row v is the padding id's: what follows an empty prompt
        self.table = np.random.default_rng(seed).standard_normal((v + 1, v)) * 2.0
        delay = d / "delay.txt"
        self.delay = float(delay.read_text()) if delay.exists() else 0.0
        self.parameters = int(self.table.size)

    def encode(self, prompt):
        return [VOCAB.index(c) for c in prompt if c in VOCAB]

    def logits(self, contexts):          # [B, 2] int64 -> [B, V]: the last token's row
        if self.delay:
            time.sleep(self.delay)
        return self.table[contexts[:, -1]]
"""

WORDS_VOCAB = ("hello ", "world ", "stop", "h", "e", "l", "o", "w", "r", "d", "s", "t", "p", " ")
WORDS_PROMPT_CHARS = 24

WORDS_PY = """
import numpy as np

VOCAB = ("hello ", "world ", "stop", "h", "e", "l", "o", "w", "r", "d", "s", "t", "p", " ")


class Model:
    task = "generation"
    vocabulary = VOCAB
    context_len = 2
    prompt_chars = 24

    def __init__(self, version_dir):
        self.parameters = 0

    def encode(self, prompt):            # longest entry first (the words come first); others dropped
        ids, i = [], 0
        while i < len(prompt):
            for j, token in enumerate(VOCAB):
                if prompt.startswith(token, i):
                    ids.append(j)
                    i += len(token)
                    break
            else:
                i += 1
        return ids

    def logits(self, contexts):          # [B, 2] int64 -> [B, V]: hello -> world -> stop -> hello
        last = contexts[:, -1]
        nxt = np.where(last < 3, (last + 1) % 3, 0)
        out = np.zeros((len(contexts), len(VOCAB)))
        out[np.arange(len(contexts)), nxt] = 1.0
        return out
"""

#: ``words`` with a chat template: each message's content followed by a space.
WORDS_CHAT_PY = WORDS_PY + """
    def chat_prompt(self, messages):
        return "".join(m["content"] + " " for m in messages)
"""


def words_encode(prompt: str) -> list[int]:
    """:data:`WORDS_PY`'s tokenizer, written again: the token ids of ``prompt``."""
    ids, i = [], 0
    while i < len(prompt):
        j = next((j for j, t in enumerate(WORDS_VOCAB) if prompt.startswith(t, i)), None)
        if j is None:
            i += 1
        else:
            ids.append(j)
            i += len(WORDS_VOCAB[j])
    return ids


NAMED_CONFIG = """
[[inputs]]
name = "a"
shape = [2]

[[inputs]]
name = "b"
shape = [1]

[[outputs]]
name = "sum"
shape = [1]

[[outputs]]
name = "scaled"
shape = [2]
"""

NAMED_PY = """
class Model:
    def __init__(self, version_dir):
        pass

    def predict(self, batch):
        a, b = batch["a"], batch["b"]                    # [n, 2], [n, 1]
        return {"sum": a.sum(axis=1, keepdims=True) + b, "scaled": a * b}

    def flops_per_row(self):
        return 5
"""

#: ``pix``: uint8 pixels in, the pixels back (uint8) and halved as float16 (the narrow dtypes).
PIX_CONFIG = """
[[inputs]]
name = "image"
shape = [4]
dtype = "uint8"

[[outputs]]
name = "raw"
shape = [4]
dtype = "uint8"

[[outputs]]
name = "half"
shape = [4]
dtype = "float16"
"""

PIX_PY = """
import numpy as np


class Model:
    def __init__(self, version_dir):
        pass

    def predict(self, image):                               # one input: the array itself
        assert image.dtype == np.uint8, image.dtype
        return {"raw": image, "half": image.astype(np.float16) / np.float16(2)}
"""

BF16_CONFIG = """
[[inputs]]
name = "x"
shape = [3]
dtype = "float32"

[[outputs]]
name = "y"
shape = [3]
dtype = "bfloat16"
"""

#: ``bf``: ``y = bfloat16(2 * x)``, a bfloat16 output (Triton's ``TYPE_BF16``) for the clients' tests.
BF16_PY = """
import ml_dtypes


class Model:
    def __init__(self, version_dir):
        pass

    def predict(self, x):                                   # one input: the array itself
        return {"y": (x * 2).astype(ml_dtypes.bfloat16)}
"""

#: ``bfid``'s config: ``bf``'s with a bfloat16 input.
BF16_IN_CONFIG = BF16_CONFIG.replace('dtype = "float32"', 'dtype = "bfloat16"', 1)

#: ``bfid``: ``y = x``, a bfloat16 input answered as it was received (the clients sending bfloat16).
BF16_ID_PY = """
class Model:
    def __init__(self, version_dir):
        pass

    def predict(self, x):                                   # one input: the array itself
        assert x.dtype.name == "bfloat16", x.dtype
        return {"y": x.copy()}
"""

RAISES_PY = """
class Model:
    def __init__(self, version_dir):
        raise RuntimeError("weights.bin is missing")

    def predict(self, batch):
        return batch
"""

WARMUP_FAILS_PY = """
import numpy as np


class Model:
    def __init__(self, version_dir):
        pass

    def predict(self, batch):
        if not batch.any():
            raise ValueError("an all-zero batch is not a valid input")
        return batch[:, :1]
"""

SYNTAX_ERROR_PY = """
class Model
    pass
"""


def write_py(version_dir: Path, source: str, **files: str) -> Path:
    """Write ``model.py`` (dedented) and ``files`` (name -> text) into ``version_dir``."""
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.py").write_text(textwrap.dedent(source))
    for name, text in files.items():
        (version_dir / name).write_text(text)
    return version_dir


WEIGHTS = (1.0, 2.0, 3.0)


def write_affine(version_dir: Path, bias: float, *, source: str = AFFINE_PY, **files: str) -> Path:
    """An :data:`AFFINE_PY` (or :data:`GATED_PY`) version with ``WEIGHTS`` and ``bias``."""
    return write_py(version_dir, source, **{"weights.json": json.dumps(WEIGHTS), "bias.txt": repr(bias), **files})


def affine(rows: list[list[float]], bias: float) -> list[list[float]]:
    """What :data:`AFFINE_PY` answers for ``rows``."""
    return (np.asarray(rows, dtype=np.float64) @ np.asarray(WEIGHTS)[:, None] + bias).tolist()


def bigram_table(seed: int) -> np.ndarray:
    """The table :data:`BIGRAM_PY` draws from ``seed``: ``[V + 1, V]``."""
    v = len(BIGRAM_VOCAB)
    return np.random.default_rng(seed).standard_normal((v + 1, v)) * 2.0


def bigram_greedy(seed: int, prompt: str, max_tokens: int) -> str:
    """Greedy decoding of :data:`BIGRAM_PY`, computed here (the reference)."""
    table = bigram_table(seed)
    ids = [BIGRAM_VOCAB.index(c) for c in prompt if c in BIGRAM_VOCAB]
    last = ids[-1] if ids else len(BIGRAM_VOCAB)
    out = []
    for _ in range(max_tokens):
        last = int(np.argmax(table[last]))
        out.append(BIGRAM_VOCAB[last])
    return "".join(out)


def move_in(build: Path, version_dir: Path) -> None:
    """Publish a version built at ``build`` (a hidden sibling) with one rename."""
    assert build.parent == version_dir.parent and build.name.startswith(".")
    os.rename(build, version_dir)


def remove_version(version_dir: Path) -> None:
    """Delete a version directory (what an operator does to retire it)."""
    shutil.rmtree(version_dir)


#: Table seeds of the clients' generative model ``gen``, by version.
CLIENT_GEN_SEEDS = {1: 20, 2: 29}


def write_client_repository(root: Path | str) -> Path:
    """The repository the clients' tests serve: ``adm`` (:data:`AFFINE_PY`, ``bias = version``,
    versions 1, 2, 10 and a 3 without a model file), ``gen`` (:data:`BIGRAM_PY`, versions 1
    and 2 with :data:`CLIENT_GEN_SEEDS`), ``two`` (:data:`NAMED_PY`) and ``pix`` (:data:`PIX_PY`:
    uint8 and float16 tensors), ``bf`` (:data:`BF16_PY`: a bfloat16 output) and ``bfid``
    (:data:`BF16_ID_PY`: a bfloat16 input answered as it came)."""
    root = Path(root)
    (root / "adm").mkdir(parents=True)
    (root / "adm" / "config.toml").write_text(AFFINE_CONFIG)
    for version in (1, 2, 10):
        write_affine(root / "adm" / str(version), bias=float(version))
    (root / "adm" / "3").mkdir()
    (root / "gen").mkdir()
    (root / "gen" / "config.toml").write_text(BIGRAM_CONFIG)
    for version, seed in CLIENT_GEN_SEEDS.items():
        write_py(root / "gen" / str(version), BIGRAM_PY, **{"seed.txt": str(seed)})
    (root / "two").mkdir()
    (root / "two" / "config.toml").write_text(NAMED_CONFIG)
    write_py(root / "two" / "1", NAMED_PY)
    (root / "pix").mkdir()
    (root / "pix" / "config.toml").write_text(PIX_CONFIG)
    write_py(root / "pix" / "1", PIX_PY)
    (root / "bf").mkdir()
    (root / "bf" / "config.toml").write_text(BF16_CONFIG)
    write_py(root / "bf" / "1", BF16_PY)
    (root / "bfid").mkdir()
    (root / "bfid" / "config.toml").write_text(BF16_IN_CONFIG)
    write_py(root / "bfid" / "1", BF16_ID_PY)
    return root
