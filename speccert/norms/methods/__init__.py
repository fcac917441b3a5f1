"""The norm methods, one module each, registered in speccert.norms.method.METHODS by their decorator.

`load_methods()` imports every module here (sorted): a new method is one new file in this folder. No
module here imports another (tests/test_norms_layering.py): shared mathematics goes in a kernel module
of speccert.norms.
"""
