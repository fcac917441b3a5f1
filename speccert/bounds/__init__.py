"""Composition of per-layer bounds into a global Lipschitz bound, certificates, audit, and certify()."""

from speccert.bounds.certificate import CERTIFICATES
from speccert.bounds.certify import certify
from speccert.bounds.lipschitz import LipschitzBound, lipschitz_bound
from speccert.bounds.options import CertifyOptions

__all__ = ["CERTIFICATES", "CertifyOptions", "LipschitzBound", "certify", "lipschitz_bound"]
