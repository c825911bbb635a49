"""One module per built-in stage kind, named after it, with that kind's section of the report:

    report_describe(stage: StageView) -> str                  # one paragraph: what the stage did
    report_figures(doc: Document, stage: StageView) -> None   # key figures and plots (only if it ran)

They live here, not beside the stages, so that `posttrain report` draws a run's report without importing torch or
the trainers. A plugin kind defines the same two functions in its own module.
"""
