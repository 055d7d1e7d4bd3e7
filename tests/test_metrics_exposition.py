"""``GET /metrics`` as text exposition format, read by ``prometheus_client``'s own parser after a
varied workload on repository models with unusual-but-legal names, with one and two workers.

Checked on the raw text as well as parsed: one ``# HELP`` and one ``# TYPE`` per family, each
family once; every histogram series' buckets cumulative (non-decreasing in ``le``) with
``+Inf`` equal to ``_count``; ``_sum`` consistent with ``_count``; label values as served.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.repo_models import (
    AFFINE_CONFIG,
    BIGRAM_CONFIG,
    BIGRAM_PY,
    write_affine,
    write_py,
)
from tests.support import Conn, Metrics, ServerProcess, http_get, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only (SO_REUSEPORT)")

#: Legal model names (layout.py: a letter or digit, then letters, digits, ``_ . -``; at most 64).
AFFINE_NAMES = ("9.a-b_c", "Z", "m" + "-_." * 21)
GEN_NAME = "gen.v-1"


def _repository(root: Path) -> Path:
    for name in AFFINE_NAMES:
        (root / name).mkdir(parents=True)
        (root / name / "config.toml").write_text(AFFINE_CONFIG)
        write_affine(root / name / "1", bias=1.0)
    (root / GEN_NAME).mkdir()
    (root / GEN_NAME / "config.toml").write_text(BIGRAM_CONFIG)
    write_py(root / GEN_NAME / "1", BIGRAM_PY, **{"seed.txt": "7"})
    return root


async def _workload(url: str, connections: int) -> int:
    """Per connection: predicts (ok, invalid input, unknown model), a streamed predict, a
    generation and a cancelled one. Returns the ok predicts sent."""
    ok = 0
    for c in range(connections):
        conn = await Conn.open(url)
        try:
            for i, name in enumerate(AFFINE_NAMES):
                r = await conn.request({"type": "predict", "id": i, "model": name, "inputs": [[0.5, 1.0, 2.0]] * (i + 1)})
                assert r["type"] == "result", r
                ok += 1
            r = await conn.request({"type": "predict", "id": "bad", "model": AFFINE_NAMES[0], "inputs": [["x", 1, 2]]})
            assert r["code"] == "invalid_input", r
            r = await conn.request({"type": "predict", "id": "nope", "model": "no-such.model", "inputs": [[1, 2, 3]]})
            assert r["code"] == "unknown_model", r
            await conn.send({"type": "predict", "id": "s", "model": AFFINE_NAMES[1], "inputs": [[1, 2, 3]] * 5,
                             "stream": True, "chunk_rows": 2})
            assert (await conn.until_terminal("s"))[1]["type"] == "done"
            await conn.send({"type": "generate", "id": "g", "model": GEN_NAME, "prompt": "ab", "max_tokens": 5 + c})
            assert (await conn.until_terminal("g"))[1]["reason"] == "length"
            await conn.send({"type": "generate", "id": "c", "model": GEN_NAME, "prompt": "a", "max_tokens": 100_000})
            await conn.send({"type": "cancel", "id": "c"})
            assert (await conn.until_terminal("c"))[1]["type"] in ("done", "error")
        finally:
            await conn.close()
    return ok


def _documented_metrics() -> set[str]:
    """The series names docs/PROTOCOL.md's Metrics section lists (each in backquotes)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text()
    return set(re.findall(r"`(wsserve_[a-z_]+)`", doc[doc.index("\n## Metrics\n"):]))


def _check_exposition(text: str) -> Metrics:
    """Assert the format rules on ``text`` (raw and parsed); return it parsed."""
    help_lines = Counter(line.split()[2] for line in text.splitlines() if line.startswith("# HELP "))
    type_lines = Counter(line.split()[2] for line in text.splitlines() if line.startswith("# TYPE "))
    assert help_lines and all(n == 1 for n in help_lines.values()), help_lines
    assert type_lines and all(n == 1 for n in type_lines.values()), type_lines
    assert set(help_lines) == set(type_lines)
    families = list(text_string_to_metric_families(text))
    names = Counter(f.name for f in families)
    assert all(n == 1 for n in names.values()), names
    for fam in families:
        if fam.type != "histogram":
            continue
        series: dict[frozenset, dict[str, object]] = defaultdict(lambda: {"buckets": []})
        for s in fam.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            key = frozenset(labels.items())
            if s.name.endswith("_bucket"):
                series[key]["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                series[key]["count"] = s.value
            elif s.name.endswith("_sum"):
                series[key]["sum"] = s.value
        # (a labelled family with no series yet - nothing observed by the worker that answered, the
        # others' snapshots not merged yet - is legal exposition: HELP and TYPE alone)
        for key, parts in series.items():
            buckets = sorted(parts["buckets"])
            where = (fam.name, dict(key))
            assert buckets and buckets[-1][0] == math.inf, where
            counts = [n for _, n in buckets]
            assert counts == sorted(counts), (where, buckets)
            assert buckets[-1][1] == parts["count"], (where, buckets[-1], parts.get("count"))
            assert parts["sum"] >= 0 and (parts["count"] > 0 or parts["sum"] == 0), (where, parts)
            if fam.name == "wsserve_batch_size":  # at least one row per batch
                assert parts["sum"] >= parts["count"], (where, parts)
    return Metrics.parse(text)


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_parse_and_hold_their_invariants_after_a_varied_workload(
    workers: int, model_cache: Path, tmp_path: Path
) -> None:
    repo = _repository(tmp_path / "repository")
    flags = ["--models", "none", "--model-repository", str(repo)]
    if workers > 1:
        flags += ["--workers", str(workers)]
    with ServerProcess(*flags, cache_dir=model_cache) as server:
        ok = asyncio.run(_workload(server.url, connections=6))

        def scraped() -> Metrics | None:
            status, headers, body = http_get(server.http + "/metrics")
            assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
            m = _check_exposition(body.decode())
            done = sum(m.get("wsserve_requests_total", model=n, type="predict", code="ok") for n in AFFINE_NAMES)
            # every ok predict and stream (6 per connection's 3 + 1), and every connection's
            # generation of 5 tokens or more, with every worker's share merged
            timed = m.get("wsserve_request_time_per_output_token_seconds_count", model=GEN_NAME)
            return m if done == ok + 6 and timed == 6 else None

        m = wait_until(scraped, 60, what="every worker's counts in one scrape")
        # every family served is documented, under the name it is served as
        exported = {line.split()[2] for line in http_get(server.http + "/metrics")[2].decode().splitlines()
                    if line.startswith("# TYPE ")}
        assert exported - _documented_metrics() == set()
        for name in AFFINE_NAMES:
            assert m.get("wsserve_requests_total", model=name, type="predict", code="ok") >= 6
            assert m.value("wsserve_request_duration_seconds_count", model=name, type="predict") >= 6
        assert m.get("wsserve_requests_total", model=AFFINE_NAMES[0], type="predict", code="invalid_input") == 6
        assert m.get("wsserve_requests_total", model="", type="predict", code="unknown_model") == 6
        assert m.value("wsserve_generated_tokens_total", model=GEN_NAME) >= sum(5 + c for c in range(6))
        # generation metrics merged over the workers: every "ab" generation's prompt and times (the
        # cancelled ones may have ended before their slot)
        assert m.value("wsserve_prompt_tokens_total", model=GEN_NAME) >= 2 * 6
        assert m.value("wsserve_time_to_first_token_seconds_count", model=GEN_NAME) >= 6
        if workers > 1:
            assert {dict(k)["worker"] for (n, k) in m.samples if n == "wsserve_ready"} == {"0", "1"}
