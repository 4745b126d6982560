"""Genomics building blocks: FASTA reading, k-mer tokens, transcript data, baselines, metrics.

Nothing here knows about adapters; the `lorabert` plugin builds on it.
"""
