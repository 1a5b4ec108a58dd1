"""Ingestion: readers (PubMedQA, JSONL, CSV, text/PDF directories) and LlamaIndex
IngestionPipelines (split → embed) that write into :mod:`medllm.storage`."""
