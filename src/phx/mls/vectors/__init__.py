"""Runners for the official MLS test vectors (mlswg/mls-implementations).

Each upstream file ``NAME.json`` has a runner module ``phx.mls.vectors.<NAME with - as _>`` that defines::

    def run(entry: dict[str, Any]) -> None   # raises (any exception) if the entry fails

and optionally ``SUITE_KEY`` (default ``"cipher_suite"``; ``None`` for suite-independent files). Files
named ``passive-client-*.json`` all use the ``passive_client`` runner. Entries of a cipher suite we do
not implement are counted as skipped; everything else passes or fails, and a runner that is missing
counts every entry of its file as failed (nothing is silently skipped).
"""

from __future__ import annotations

import importlib
import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from phx.crypto import supported_suites


@dataclass
class FileResult:
    name: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)


def runner_name(file_name: str) -> str:
    stem = Path(file_name).stem
    if stem.startswith("passive-client-"):
        return "passive_client"
    return stem.replace("-", "_")


def load_runner(file_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"phx.mls.vectors.{runner_name(file_name)}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("phx.mls.vectors."):
            return None
        raise


def run_file(path: Path) -> FileResult:
    result = FileResult(path.name)
    entries: list[dict[str, Any]] = json.loads(path.read_text())
    runner = load_runner(path.name)
    suite_key = getattr(runner, "SUITE_KEY", "cipher_suite") if runner else "cipher_suite"
    for i, entry in enumerate(entries):
        if suite_key is not None and suite_key in entry and entry[suite_key] not in supported_suites():
            result.skipped += 1
            continue
        if runner is None:
            result.failed += 1
            if not result.failures:
                result.failures.append("no runner for this file")
            continue
        try:
            runner.run(entry)
        except Exception as e:  # noqa: BLE001 - every failure of any kind is counted and reported
            result.failed += 1
            tb = traceback.extract_tb(e.__traceback__)[-1]
            result.failures.append(f"entry {i}: {type(e).__name__}: {e} ({tb.filename}:{tb.lineno})")
        else:
            result.passed += 1
    return result


def run_dir(directory: Path) -> list[FileResult]:
    return [run_file(p) for p in sorted(directory.glob("*.json"))]
