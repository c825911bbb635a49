"""Processes a stage needs beyond the runner's: `accelerate launch` on one machine or several (`accelerate.py`) with
the worker each process runs (`worker.py`), and the vLLM rollout server a GRPO stage starts and stops
(`rollout.py`, serving with `rollout_server.py`)."""
