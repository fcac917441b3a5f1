"""Moved to speccert.bounds.certificates.second_order (the certificate kinds load themselves from there); this
module keeps the old import path working."""

from speccert.bounds.certificates.second_order import *  # noqa: F403
