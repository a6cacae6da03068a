"""Model architectures: the mapping of the zoo's keys to megatron.core, the model builder, counts.

The architecture keys' types are config data (:mod:`primus_runtime.config.arch_types`): this
package reads resolved configs, the config layer never imports it. Importing it stays light (no
torch, no megatron): :mod:`~primus_runtime.model.config_map`, :mod:`~primus_runtime.model.builder`
and :mod:`~primus_runtime.model.param_count` import megatron.core themselves.
"""
