"""Primus experiment configs: YAML layers with bases, ``${VAR:default}``, overrides and a schema.

Pure Python and PyYAML: resolving a config never imports torch or megatron.
"""
