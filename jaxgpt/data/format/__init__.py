"""Modalities' .idx/.pbin format: the header, the index pickles, validated reading, writing and merging."""
