"""What the trainer stages share: the trainer-stage base (`trainer.py`), atomic checkpoints and the final save,
and the pieces added to TRL's trainers: MoE balancing, the MTP loss, dynamic sampling, vLLM weight sync, LoRA,
weighted data mixes and experiment tracking. Nothing here imports torch at import time of this package."""
