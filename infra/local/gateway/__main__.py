"""Command line: ``python -m infra.local.gateway --db-uri URI --jwt-secret SECRET [--port N]``."""

from infra.local.gateway.server import main

if __name__ == "__main__":
    main()
