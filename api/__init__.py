"""Persistence and queue semantics for agent-manager (no LLM code here)."""
