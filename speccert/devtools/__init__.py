"""Tools for developing speccert (not part of the public API): executed docs."""
