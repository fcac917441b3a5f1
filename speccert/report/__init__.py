"""Reports: the certify report and its JSON schema (certify_report.py, schema.py), the CI gate (gate.py,
policy.py, rules.py, baseline.py) and its renderings (junit.py, markdown.py, registered in gate_outputs.py)."""
