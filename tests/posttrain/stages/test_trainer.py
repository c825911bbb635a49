"""The trainer-stage skeleton: the order of its steps matters on GPUs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

from data_pipelines.tasks.arithmetic import solution_text, train_prompts
from posttrain.recipe import parse_recipe
from posttrain.stages import KINDS
from posttrain.stages.base import StageContext
from posttrain.stages.sft import SFTStage


class RecordingSFT(SFTStage):
    """SFT whose `load_model` hook notes what exists when the model is loaded."""

    seen: ClassVar[list[Any]] = []

    def load_model(self, path: str) -> Any:
        RecordingSFT.seen.append(getattr(self, "args", None))
        return super().load_model(path)


def test_the_model_is_loaded_after_the_trl_config(tmp_path: Path, tiny_base: Path) -> None:
    """Under ZeRO-3, TrainingArguments switch on transformers' partitioned loading (`zero.Init`): a model loaded
    before them is whole on every GPU. The skeleton builds the TRL config first, then loads the model."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": solution_text(r["a"], r["b"])}) + "\n"
                            for r in train_prompts(8, seed=1)))
    recipe = parse_recipe(f"""\
output_dir: {tmp_path / "run"}
model: {{name_or_path: {tiny_base}}}
stages:
  - {{name: sft, kind: sft, data: {data}, trl: {{max_steps: 1, per_device_train_batch_size: 4, max_length: 32}}}}
""", kinds=KINDS)
    ctx = StageContext(recipe, recipe.stages[0], tmp_path / "run", str(tiny_base), logging.getLogger("test"))
    RecordingSFT.seen.clear()
    result = RecordingSFT(ctx).run()
    assert result.metrics["steps"] == 1
    [args] = RecordingSFT.seen
    assert type(args).__name__ == "SFTConfig" and Path(args.output_dir) == tmp_path / "run" / "sft" / "checkpoints"
