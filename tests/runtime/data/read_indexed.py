"""Read a preprocessed dataset back through megatron.core; print what it holds as JSON.

Run in a subprocess with a megatron tree on the path (the test process never imports megatron):
``read_indexed.py PREFIX`` prints the documents as IndexedDataset returns them, with the dtype;
``read_indexed.py PREFIX --gpt SEQ_LEN EOD VOCAB HELPERS_DIR`` also builds GPTDatasets with
BlendedMegatronDatasetBuilder (helpers_cpp taken from HELPERS_DIR) and prints every training
sample, in the dataset's unshuffled order, next to the document order GPTDataset chose.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import megatron.core.datasets
from megatron.core.datasets.indexed_dataset import IndexedDataset


def main(prefix: str, *options: str) -> None:
    gpt = options[1:] if options[:1] == ("--gpt",) else ()
    ds = IndexedDataset(prefix)
    out = {"dtype": ds.index.dtype.__name__, "docs": [ds[i].tolist() for i in range(len(ds))],
           "document_indices": ds.document_indices.tolist()}
    if gpt:
        seq_len, eod, vocab, helpers_dir = int(gpt[0]), int(gpt[1]), int(gpt[2]), gpt[3]
        megatron.core.datasets.__path__.append(helpers_dir)  # a helpers_cpp compiled for this test only
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

        config = GPTDatasetConfig(random_seed=1234, sequence_length=seq_len, blend=([prefix], None), split="1,0,0",
                                  tokenizer=SimpleNamespace(eod=eod, pad=-1, vocab_size=vocab,
                                                           unique_identifiers={"class": "test"}),
                                  reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False)
        train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [None, None, None], lambda: True, config).build()
        samples = [None] * len(train)
        for i in range(len(train)):
            item = train[i]
            samples[int(train.shuffle_index[i])] = item["tokens"].tolist() + item["labels"][-1:].tolist()
        out["gpt"] = {"document_index": train.document_index.tolist(), "samples": samples,
                      "sample_index": train.sample_index.tolist()}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
