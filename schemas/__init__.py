"""Pydantic models: the one definition of every record that crosses a stage or lands in storage."""
