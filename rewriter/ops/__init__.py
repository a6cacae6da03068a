"""Operations: one file per kind, each a libcst transformation that reports what it did.

``catalog`` is the YAML surface (no libcst); ``registry`` maps names to implementations.
Importing this package does not import libcst, so cached rebuilds stay fast.
"""
