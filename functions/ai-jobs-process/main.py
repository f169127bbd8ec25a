"""ai-jobs-process: the private worker Cloud Tasks calls (claim, run the AI pipeline, store).

Deployed as a Cloud Functions gen2 HTTP function with entry point ``process_job``; the work is
in ``shared/`` (staged beside this file by deploy.sh).
"""

from shared import identity, worker
from shared.http import endpoint
from shared.settings import get_settings

get_settings()  # fail at cold start, naming any missing or malformed setting
identity.require_caller_check(get_settings())  # private: refuse to start unguarded

process_job = endpoint("POST", cors=False)(worker.process_job)
