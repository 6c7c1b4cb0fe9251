"""histoscan: find metastatic cancer in H&E lymph-node patches and whole slides."""

__version__ = "0.1.0"
