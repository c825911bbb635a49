"""The base layer: errors, plugin loading, model/tokenizer loading, logging and text generation.

Everything else builds on it (`rewards/`, `data_pipelines/`, then the pipeline in `posttrain/`); it
imports nothing above itself, so any layer can use it without pulling in the pipeline.
"""
