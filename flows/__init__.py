"""Prefect flows that orchestrate the DVC stages (never a second copy of a stage)."""
