"""Offline side of TwinBERT: data, models, training, evaluation, export and indexing."""
