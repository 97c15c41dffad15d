"""The catalogue output: what each event type looks like (GET /types), learned from every batch."""

from devbus.bus.outputs.catalogue.catalogue import Catalogue

__all__ = ["Catalogue"]
