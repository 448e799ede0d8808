"""The node's task handlers, one module per family of task kinds.

Each handler takes ``(job_id, request)`` — a typed request record of ``xdp_compute.contract`` —
and returns the kind's reply record. ``node.executors.handler_table`` is the one place that maps
every kind to its handler; importing a module here registers nothing.
"""
