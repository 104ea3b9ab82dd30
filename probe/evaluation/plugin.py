"""lmms-eval's entry point for the ``probe`` model class (``--model probe`` on lmms-eval's command line).

Registered in ``pyproject.toml`` under the ``lmms_eval.models`` entry-point group; the class itself is
imported only when lmms-eval builds the model.
"""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(model_id="probe", simple_class_path="probe.evaluation.wrapper.ProbeLVLM")
