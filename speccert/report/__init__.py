"""Reports: the certify report and its JSON schema (certify_report.py, schema.py) and the certify plot.
The CI gate (policy, rules, baseline, JUnit/Markdown outputs) is a workflow above this layer: speccert.gate."""
