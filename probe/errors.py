"""The errors that mean bad input (reported to a CLI user as one line, not a traceback)."""

from probe.data.calibration import CalibrationError
from probe.engine import PruneConfigError
from probe.loading import ModelLoadError
from probe.models.base import InvalidInputsError, UnknownModelFamilyError
from probe.pools import PoolError
from probe.sparsity.masks import SparsityError

USER_ERRORS = (
    CalibrationError,
    InvalidInputsError,
    ModelLoadError,
    PoolError,
    PruneConfigError,
    SparsityError,
    UnknownModelFamilyError,
    FileNotFoundError,
)
