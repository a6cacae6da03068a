"""Checkpoint conversion between Hugging Face safetensors and the trainer's distributed checkpoints.

``python -m primus_runtime convert hf-to-mcore|mcore-to-hf`` (:mod:`.cli`). The megatron side is
described by the model itself (:mod:`.layout`: the experiment's ``GPTModel`` built on the meta
device, whose sharded state dict names every key, global shape and offset the trainer saves);
:mod:`.families` says how each Hugging Face tensor maps onto the model's parameters;
:mod:`.dcp_io` streams tensors into and out of ``torch.distributed.checkpoint`` one at a time and
:mod:`.hf_io` reads and writes sharded safetensors, so memory stays bounded by one tensor.
"""
