"""Data models shared by every layer: tasks, pools and workflows (pydantic, no I/O)."""
