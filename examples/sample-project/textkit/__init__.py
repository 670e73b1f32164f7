"""textkit: tiny text helpers (the sample project CodeForge's demo workflow extends)."""
