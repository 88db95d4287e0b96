"""Data: synthetic CT and phantoms, datalists and splits, training slices, the package's own data (assets),
MSD download. Submodules are imported on first use (``bundle.data.assets`` needs no PyTorch)."""


def __getattr__(name: str):
    """``bundle.<package>.<module>`` in config expressions imports the module on first use."""
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
