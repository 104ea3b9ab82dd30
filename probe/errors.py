"""The toolkit's error family.

Every error a user can fix (bad input, a missing file, a device this machine lacks) derives from
:class:`ProbeError`; the CLI reports it as one line naming the problem, while anything else (a bug)
keeps its traceback. This module imports nothing, so any module can raise these errors.
"""


class ProbeError(Exception):
    """A problem the user can fix, reported by the CLI as one line."""


class OutputError(ProbeError):
    """An output path that cannot be written (not a folder, read-only, a disk too full)."""


class DeviceError(ProbeError):
    """A device this machine does not have, or a device string torch does not understand."""
