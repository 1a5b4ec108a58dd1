"""The query engine: retrieval tools (dense, BM25, hybrid, fetch-by-PMID), routing between
answering directly and retrieval-augmented answers with citations, abstention, chat memory."""
