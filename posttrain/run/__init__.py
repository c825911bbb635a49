"""A run of a recipe: the runner (skip, resume or run each stage, then the report), the lock that keeps one run per
folder, and the base model the recipe builds once per run."""
