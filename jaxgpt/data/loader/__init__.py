"""The training-time reader: Modalities' windows over .pbin files, and seeded, host-sharded global batches."""
