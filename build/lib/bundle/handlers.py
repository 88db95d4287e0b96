"""Handlers that keep a training run useful when something around it is off: a tracking server that
fails, a run that ends between two validations."""

from __future__ import annotations

import functools
import logging
import os

from ignite.engine import Events
from monai.handlers import MLFlowHandler

logger = logging.getLogger(__name__)


class ResilientMLFlowHandler(MLFlowHandler):
    """``MLFlowHandler`` that never stops training: when the tracking server is unreachable, the URI is
    wrong or the SQLite store is locked, it logs one warning naming the URI and goes quiet for the rest
    of the run (TensorBoard and the stats log still record everything)."""

    _guarded = ("start", "iteration_completed", "epoch_completed", "complete", "close")
    # MLflow's HTTP client retries 7 times with exponential back-off (minutes of a stalled run);
    # unless the user chose otherwise, give up after a few seconds instead.
    http_defaults = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

    def __init__(self, *args, **kwargs):
        for name, value in self.http_defaults.items():
            os.environ.setdefault(name, value)
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or kwargs.get("tracking_uri") or (args[0] if args else None)
        self.failed = False
        try:  # MLflow opens a local store (e.g. SQLite) already here
            super().__init__(*args, **kwargs)
        except Exception as error:
            self._give_up(error)
        for name in self._guarded:
            setattr(self, name, self._guard(getattr(self, name)))

    def _give_up(self, error: Exception) -> None:
        self.failed = True
        logger.warning(f"MLflow tracking at '{self.uri}' failed ({type(error).__name__}: {error}); "
                       "training goes on without MLflow logging.")

    def attach(self, engine) -> None:
        if not self.failed:
            super().attach(engine)

    def _guard(self, method):
        @functools.wraps(method)
        def guarded(*args, **kwargs):
            if self.failed:
                return None
            try:
                return method(*args, **kwargs)
            except Exception as error:  # any tracking failure: network, SQL, permissions, schema
                self._give_up(error)
                return None

        return guarded


class ValidateAtEnd:
    """Runs the validator once more when training ends on an epoch that ``val_interval`` skipped.

    MONAI Label fine-tunes ``train.json`` for however many epochs the user asks (it overrides
    ``max_epochs``, not the interval): without this a 2-epoch run would never validate, save no best
    model and publish nothing. Runs whose length is a multiple of the interval are unchanged.
    """

    def __init__(self, validator, interval: int):
        self.validator = validator
        self.interval = int(interval)

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        if engine.state.epoch % self.interval:
            self.validator.run(engine.state.epoch)
