"""Code shared by every function of the AI job queue: settings, the job model, the store,
the HTTP layer, Cloud Tasks dispatch, the processor and the AI work (``shared.ai``)."""
