"""A REST server with Qdrant's wire shape over durable SplatStores (``m2m-gpu serve``)."""

from .app import create_app

__all__ = ["create_app"]
