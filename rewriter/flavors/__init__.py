"""Build flavors: whole-tree rewrites applied after the patchsets, for special-purpose wheels.

The ``default`` flavor is the shipped wheel and has no rewrites. ``cpu-test`` routes every CUDA
call of megatron-core through one device module so the real code runs on CPU-only hosts (CI);
see :mod:`rewriter.flavors.cpu_test`. A flavor is recorded in the manifest and in the version
(``+primus.v0.4.0.cputest``), and it never changes what the default flavor builds.
"""

from __future__ import annotations

FLAVORS = ("default", "cpu-test")
