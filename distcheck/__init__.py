"""distcheck: find the rank, step and parameter where data-parallel replicas part ways.

Importing this package does not import any training framework; the MindSpore probe
lives in :mod:`distcheck.mindspore`.
"""
__version__ = "0.1.0"
