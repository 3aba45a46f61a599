"""Kernel drivers and result merging shared by every backend.

``topk``: the one place that decides which of several candidates with equal keys is kept
(the smaller id) and in which order results leave (key, then id), for selections on the
host and on the device.
"""
