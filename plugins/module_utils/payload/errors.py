# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""The exceptions every part of the payload library raises (host side: Python 3.6, standard library)."""

from __future__ import absolute_import, division, print_function


class PayloadError(Exception):
    """Any problem with a k0s executable or its outputs; the message names the problem."""


class CorruptPayloadError(PayloadError):
    """The payload is present but damaged (truncated, flipped bytes, bad checksums, junk)."""
