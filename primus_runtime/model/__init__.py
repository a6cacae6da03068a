"""Model architectures: the zoo's keys and types, their mapping to megatron.core, the model builder.

Importing this package stays light (no torch, no megatron): the config layer reads
:mod:`primus_runtime.model.arch_types` from here. :mod:`~primus_runtime.model.config_map`,
:mod:`~primus_runtime.model.builder` and :mod:`~primus_runtime.model.param_count` import
megatron.core themselves.
"""
