"""Moved to speccert.bounds.certificates.margin_aware (the certificate kinds load themselves from there); this
module keeps the old import path working."""

from speccert.bounds.certificates.margin_aware import *  # noqa: F403
