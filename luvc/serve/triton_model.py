"""The Python-backend model of a repository written by ``luvc-export triton`` (copied there as ``1/model.py``).

Triton's Python backend runs this file in its own interpreter, which may not see the environment luvc-export is
installed in, and imports its own utilities (which need NumPy) right after this module. So, on import, this module
puts the site folders of the ``python_paths`` parameter of ``../config.pbtxt`` (the Python that wrote the
repository; edit it when the server runs another environment) ahead of the interpreter's own; ``initialize`` then
hands the work to ``luvc.serve.triton.TritonModel``.
"""

import json
import re
import site
import sys
from pathlib import Path

PYTHON_PATHS = re.compile(r'key:\s*"python_paths"\s*value:\s*\{\s*string_value:\s*"([^"]*)"')


def _add_python_paths() -> None:
    config = Path(__file__).resolve().parents[1] / "config.pbtxt"
    found = PYTHON_PATHS.search(config.read_text()) if config.is_file() else None
    before = list(sys.path)
    for path in filter(None, found.group(1).split(":") if found else ()):
        site.addsitedir(path)  # also runs the folder's .pth files (editable installs)
    sys.path[:] = [path for path in sys.path if path not in before] + before


_add_python_paths()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        try:
            from luvc.serve.triton import TritonModel
        except ImportError as error:
            raise RuntimeError(
                f"luvc-export cannot be imported by Triton's Python backend ({error}); install luvc-export into the "
                "Python the backend runs, or set the python_paths parameter in config.pbtxt to its site-packages."
            ) from error
        self.model = TritonModel(args, parameters)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
