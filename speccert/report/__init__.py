"""Renderings of results computed below (the certify result and its schema live in speccert.bounds):
the certify plot, and for now the CI gate (gate.py, policy.py, rules.py, baseline.py) with its renderings
(junit.py, markdown.py, registered in gate_outputs.py), which move to their own package speccert.gate."""
