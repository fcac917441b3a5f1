"""Moved to speccert.bounds.certificates.local (the certificate kinds load themselves from there); this
module keeps the old import path working."""

from speccert.bounds.certificates.local import *  # noqa: F403
