"""Config switches that may arrive from the command line: ``--publish false`` reaches a bundle config as
the string "false", which Python takes as true. A light module: inference configs use it too."""


def flag(value) -> bool:
    """A config switch given in JSON (``true``) or on the command line (``"false"``, ``"0"``, ``"no"``)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)
