"""A workload that shares its module with others: the module's run, its own name and sizes.

A module that provides several workloads (dask_qr, emulated_big, omp_regions)
lists them in VARIANTS, name -> params function; the registry wraps each in a
Variant, which answers NAME and params itself and everything else (DESCRIPTION,
LAUNCHES_OWN_PROGRAMS, EXTRA_MODES, prepare, tasks, run) from the module.
"""


class Variant:
    """The workload `name` of `module`, sized by `params(cores, quick)`."""

    def __init__(self, module, name, params):
        self.module = module  # where every attribute not set here comes from
        self.NAME = name
        self.params = params

    def __getattr__(self, attribute):
        # Only called for attributes __init__ did not set; a missing optional
        # one (EXTRA_MODES, prepare) raises AttributeError, so hasattr() works.
        return getattr(self.module, attribute)

    def __repr__(self):
        return f"Variant({self.NAME!r} of {self.module.__name__})"
