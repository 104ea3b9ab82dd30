"""The errors that mean bad input (reported to a CLI user as one line, not a traceback)."""

from probe.capture import BlockRangeError
from probe.data.calibration import CalibrationError
from probe.data.offline import OfflineDataError
from probe.engine import PruneConfigError
from probe.evaluation.harness import HubUnavailableError, UnknownTaskError, UnsupportedRequestError
from probe.grid import GridConfigError
from probe.loading import ModelLoadError
from probe.manifest import RecordError
from probe.models.base import InvalidInputsError, UnknownModelFamilyError
from probe.pools import PoolError
from probe.reference.build import ReferenceModelError
from probe.sparsity.masks import SparsityError

USER_ERRORS = (
    ReferenceModelError,
    CalibrationError,
    OfflineDataError,
    InvalidInputsError,
    ModelLoadError,
    PoolError,
    PruneConfigError,
    SparsityError,
    UnknownModelFamilyError,
    UnknownTaskError,
    HubUnavailableError,
    UnsupportedRequestError,
    GridConfigError,
    RecordError,
    BlockRangeError,
)
