"""The HTTP API and its web page: ``create_app(predictor, settings)``; ``histoscan serve``."""

from histoscan.serve.app import create_app
from histoscan.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
