"""Distillation data: prompt sources, teachers, rejection sampling, filters, decontamination."""
