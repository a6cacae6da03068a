"""Data preparation for training: JSONL text → Megatron's indexed ``.bin``/``.idx`` pairs.

:mod:`primus_runtime.data.tokenizers` loads a local tokenizer (Hugging Face ``tokenizers`` or
SentencePiece) and :mod:`primus_runtime.data.preprocess` tokenizes a corpus with a process pool
and writes it with megatron.core's own ``IndexedDatasetBuilder``. For training,
:mod:`primus_runtime.data.indexed_check` checks ``.idx``/``.bin`` pairs and the dataset index
cache before megatron reads them, and :mod:`primus_runtime.data.helper_build` compiles
megatron's dataset helper where a source tree lacks it. Importing this package loads
neither torch nor megatron: only the writer needs them, and worker processes never do.
"""
