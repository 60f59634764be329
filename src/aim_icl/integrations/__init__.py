"""Integrations with other tools; each sub-package needs its own extra and is imported only by that tool."""
