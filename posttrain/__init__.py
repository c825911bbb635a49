"""posttrain: reproduce DeepSeek-V3/R1 post-training, from a laptop to a multi-GPU MoE run."""

__version__ = "0.1.0"
