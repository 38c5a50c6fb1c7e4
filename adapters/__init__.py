"""Adapters that run Transformers' own modeling code inside the anymodel engine."""
