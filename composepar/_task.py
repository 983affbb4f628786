"""Per-thread task scopes: a lease per running task, native pools set to its budget.

(stub: the real runtime lands in the next commit)
"""

__all__ = ["enter_main_thread"]


def enter_main_thread():
    """Opens the calling (main) thread's lease, as for a task: native calls made
    outside pools get the main thread's fair share. Idempotent."""
