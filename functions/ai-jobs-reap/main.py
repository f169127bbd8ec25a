"""ai-jobs-reap: the private sweep Cloud Scheduler calls (re-dispatch lost jobs, purge old ones).

Deployed as a Cloud Functions gen2 HTTP function with entry point ``reap_jobs``; the work is
in ``shared/`` (staged beside this file by deploy.sh).
"""

from shared import identity, reaper
from shared.http import endpoint
from shared.settings import get_settings

get_settings()  # fail at cold start, naming any missing or malformed setting
identity.require_caller_check(get_settings())  # private: refuse to start unguarded

reap_jobs = endpoint("POST", "GET", cors=False)(reaper.reap_jobs)
