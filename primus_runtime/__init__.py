"""primus_runtime: train Primus-configured models against the patched megatron-core wheel.

So far it holds :mod:`primus_runtime.wheel_info`, which reads what the installed megatron-core
was built with; configs and the trainer build on it.
"""
