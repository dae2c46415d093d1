"""The offline data tools: JSONL -> .idx -> .pbin, and shuffles and chunks of either, as Modalities writes them."""
