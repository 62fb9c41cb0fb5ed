"""seedx-agent: host the SEED-X stack and use it as an agent.

Importing this package must stay cheap (no torch): the CLI and plugin discovery import it.
"""

__version__ = "0.1.0"
