"""Renderers of results computed below (the certify result and its JSON schema live in speccert.bounds):
the certify plot. The CI gate (policy, rules, baseline, JUnit/Markdown outputs) is a workflow above this
layer: speccert.gate."""
