"""pard-export: ahead-of-time export of PARD speculative decoding (draft + target) and a slim runtime.

Layering (tests/test_import_graph.py checks it): the leaf modules (contract, errors, files, host) import
nothing of the package; `runtime` never imports `export`, `train` or `triton_repo`; `plugins.pard_attention`
is a dependency of this package and never imports it. No module imports another that imports it back.
"""

__version__ = "0.1.0"
