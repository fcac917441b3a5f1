"""Moved to speccert.bounds.certificates.global_margin (the certificate kinds load themselves from there); this
module keeps the old import path working."""

from speccert.bounds.certificates.global_margin import *  # noqa: F403
