"""DIR/report.md from DIR/report.json and the stages' logs; `posttrain report DIR` rebuilds it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.errors import PosttrainError


def write_report(run_dir: Path) -> Path:
    try:
        report = json.loads((run_dir / "report.json").read_text())
    except (OSError, ValueError) as exc:
        raise PosttrainError(f"{run_dir}: no readable report.json ({exc}); run `posttrain run` first") from None
    lines = [f"# posttrain run: {run_dir}", "", "| stage | kind | status | seconds |", "|---|---|---|---|"]
    for name, entry in report["stages"].items():
        lines.append(f"| {name} | {entry['kind']} | {entry['status']} | {entry['seconds']:.1f} |")
    for name, entry in report["stages"].items():
        lines += ["", f"## {name} ({entry['kind']})", ""]
        lines += [f"- {key}: {_fmt(value)}" for key, value in entry.get("metrics", {}).items()]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)
