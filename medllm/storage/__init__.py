"""Persistence under MEDLLM_HOME: Chroma (embedded PersistentClient or HttpClient), the
docstore that deduplicates by stable id, and the BM25 index kept in step with it."""
