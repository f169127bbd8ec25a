"""ai-jobs-create: create a job (202 with its id) or answer a simple query at once (200).

Deployed as a Cloud Functions gen2 HTTP function with entry point ``create_job``; the work is
in ``shared/`` (staged beside this file by deploy.sh).
"""

from shared import api
from shared.http import endpoint
from shared.settings import get_settings

get_settings()  # fail at cold start, naming any missing or malformed setting

create_job = endpoint("POST")(api.create_job)
