"""A plugin that fails to import."""

raise ImportError("brokenplugin needs a library that is not installed")
