"""ai-jobs-cancel: cancel a queued or running job (409 when it has already finished).

Deployed as a Cloud Functions gen2 HTTP function with entry point ``cancel_job``; the work is
in ``shared/`` (staged beside this file by deploy.sh).
"""

from shared import api
from shared.http import endpoint
from shared.settings import get_settings

get_settings()  # fail at cold start, naming any missing or malformed setting

cancel_job = endpoint("POST", "DELETE")(api.cancel_job)
