"""ai-jobs-list: the caller's jobs, newest first, filtered by status/type, keyset-paginated.

Deployed as a Cloud Functions gen2 HTTP function with entry point ``list_jobs``; the work is
in ``shared/`` (staged beside this file by deploy.sh).
"""

from shared import api
from shared.http import endpoint
from shared.settings import get_settings

get_settings()  # fail at cold start, naming any missing or malformed setting

list_jobs = endpoint("GET")(api.list_jobs)
