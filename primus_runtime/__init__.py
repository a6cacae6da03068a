"""primus_runtime: train Primus-configured models against the patched megatron-core wheel.

``config`` resolves experiment YAML, ``flags`` checks its Primus flags against what the
installed megatron-core was built with (``wheel_info``), ``model`` maps the config onto
megatron.core's TransformerConfig and GPTModel, and ``data`` turns JSONL corpora into Megatron's
indexed datasets. ``python -m primus_runtime`` is the command line (``cli``).
"""
