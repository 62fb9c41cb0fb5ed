"""Plugins that ship inside seedx_agent and are always registered (`plugins.DEFAULT_PLUGINS`)."""
