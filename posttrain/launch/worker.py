"""Entry point of one process of a stage run under `accelerate launch` (see launch.py).

`python -m posttrain.launch.worker RUN_DIR STAGE` rebuilds the stage's context from the resolved recipe;
rank 0 writes DIR/<stage>/result.json for the runner. Workers run under the lock of the run that
launched them (run_lock.py): started by hand, they refuse.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from posttrain.core.errors import PosttrainError
    from posttrain.run.lock import check_worker_lock

    run_dir, stage_name = argv or sys.argv[1:]
    try:
        check_worker_lock(Path(run_dir))
    except PosttrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _work(run_dir, stage_name)


def _work(run_dir: str, stage_name: str) -> int:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from posttrain.core.log import setup_logging
    from posttrain.core.run_folder import RESOLVED_RECIPE, RESULT_FILE
    from posttrain.recipe import parse_recipe
    from posttrain.run.base_model import base_model_ref
    from posttrain.stages import KINDS
    from posttrain.stages.base import StageContext

    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Without CUDA the launcher asks for CPU ranks (ACCELERATE_USE_CPU); a bare PartialState() ignores that and
    # every rank would think it is alone (each the main process, no process group).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    setup_logging(None, rank=state.process_index)
    resolved = Path(run_dir) / RESOLVED_RECIPE
    # Already resolved and checked by the run that launched us: paths are absolute, plugins import.
    recipe = parse_recipe(resolved.read_text(), source=str(resolved), kinds=KINDS, check=False)
    stage = recipe.stage(stage_name)
    ctx = StageContext(recipe, stage, Path(run_dir), base_model_ref(recipe, Path(run_dir)),
                       logging.getLogger(f"posttrain.{stage_name}"),
                       process_index=state.process_index, num_processes=state.num_processes)
    result = KINDS.get(stage.kind).run(ctx)
    state.wait_for_everyone()
    if state.is_main_process:
        out = Path(run_dir) / stage_name / RESULT_FILE
        out.write_text(json.dumps({"metrics": result.metrics, "outputs": result.outputs}))
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
