"""Revenue analytics library: composite PTransforms and pure domain functions.

No I/O paths or CLI concerns live here; see ``pipelines/`` for wiring.
"""
