"""Peer task queues measured beside codeforge: one module each, holding both its harness side (launch
workers, enqueue) and its worker side (the task function that records its start time).

Each module imports its library at the top, so importing it raises ImportError when the `bench` extra is
missing; the harness turns that into a skip with the install hint.
"""
