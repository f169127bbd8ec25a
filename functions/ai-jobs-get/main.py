"""ai-jobs-get: a job's status, progress, current step, result or error (polling; ETag/304).

Deployed as a Cloud Functions gen2 HTTP function with entry point ``get_job``; the work is
in ``shared/`` (staged beside this file by deploy.sh).
"""

from shared import api
from shared.http import endpoint
from shared.settings import get_settings

get_settings()  # fail at cold start, naming any missing or malformed setting

get_job = endpoint("GET", "HEAD")(api.get_job)
