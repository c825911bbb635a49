"""Write a pip constraints file from a `pip install --dry-run --report` of the `vllm` extra.

The `vllm` extra resolves its own torch, transformers and friends (vLLM pins torch and bounds transformers), so
the GPU install runs other versions than the default one. `make test-gpu-pins` runs the suite with those versions
on a CPU: it installs posttrain[dev] under this file's constraints, without vLLM itself (it needs CUDA). Every
package of the resolve is pinned except vLLM; a local version label (`2.13.0+cpu`, `+cu130`) is dropped, so the pin
means the same release on every machine and `make setup` picks its build (the CPU one without a GPU).

Regenerate after moving the vllm extra's range or TRL's pin (one line each; Python 3.11, Linux x86_64):

    pip install --dry-run --ignore-installed --quiet --report /tmp/vllm.json "vllm==0.31.0" "trl==1.16.0"
    python scripts/constraints_from_report.py /tmp/vllm.json > constraints/vllm-0.31.txt
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

#: Left out of the constraints: what the CPU environment cannot install.
LEFT_OUT = {"vllm"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints(report: dict, source: str) -> str:
    pins = {}
    top = []
    for item in report["install"]:
        meta = item["metadata"]
        name, version = normalize(meta["name"]), meta["version"].split("+", 1)[0]
        if item.get("requested"):
            top.append(f"{name}=={version}")
        if name not in LEFT_OUT:
            pins[name] = version
    wanted = " ".join(f'"{t}"' for t in sorted(top))
    head = [
        f"# The versions pip resolves for {wanted} ({source}), minus vLLM: what the GPU install",
        "# (POSTTRAIN_EXTRAS=dev,vllm make setup) runs. `make test-gpu-pins` installs posttrain[dev] under these",
        "# constraints (torch's CPU build) and runs the whole suite. Produced and regenerated with:",
        f"#   pip install --dry-run --ignore-installed --quiet --report /tmp/vllm.json {wanted}",
        "#   python scripts/constraints_from_report.py /tmp/vllm.json > constraints/vllm-0.31.txt",
    ]
    return "\n".join(head + [f"{n}=={v}" for n, v in sorted(pins.items())]) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0])
    report = json.loads(path.read_text())
    env = report.get("environment", {})
    source = f"pip {report.get('pip_version', '?')}, Python {env.get('python_version', '?')}, " \
             f"{env.get('sys_platform', '?')} {env.get('platform_machine', '?')}"
    sys.stdout.write(constraints(report, source))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
