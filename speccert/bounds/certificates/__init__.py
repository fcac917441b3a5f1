"""The certificate kinds: one module per kind, each holding one `@register_certificate` class with its
`name` and `order` (speccert.bounds.certificate). speccert.bounds.certificate loads every module of this
package itself (`Registry.load_package`), so a new kind is one new file here and nothing else changes.
Modules whose names start with "_" are not loaded: put helpers shared by several kinds there."""
