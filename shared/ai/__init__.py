"""The AI work: fleet data, analytics from code, result models, writers, pipeline and router.

Import the submodules you need (``shared.ai.pipeline``, ``shared.ai.router`` …); this package
file stays light so that importing ``shared.ai`` loads neither numpy nor google.genai.
Try it: ``python -m shared.ai "모든 서버 분석하고 최적화 리포트 만들어줘"``.
"""
