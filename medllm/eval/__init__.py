"""Evaluation: one module per task on a shared base (PubMedQA, NLI, MCQ, retrieval, RAGAS),
metrics with intervals, and run directories with reports (markdown, JSON, plots)."""
