"""Errors a user can act on, kept in a leaf module so that every package can raise them."""


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the key and the fix."""
