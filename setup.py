"""Build hook only (metadata lives in pyproject.toml): ship ``owl_plugin_autoload.pth``.

The .pth line ``import owl_plugin_autoload`` runs at every interpreter start and installs the
tiny import hook that registers owl-plugin's compact-checkpoint loader with transformers.
A .pth must sit at the root of site-packages, which package data cannot reach, so ``build_py``
puts it there itself:

* ``pip install .`` (wheel): into ``build_lib``, the root of the wheel's purelib;
* ``pip install -e .`` (PEP 660): setuptools zips the unpacked editable wheel, which is the
  ``install_lib`` of the ``install`` command it configured; the file goes there.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "owl_plugin_autoload.pth"


class build_py_with_pth(build_py):
    """``build_py`` that also ships the start-up .pth file."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            destination = Path(self.get_finalized_command("install").install_lib)
        else:
            destination = Path(self.build_lib)
        self.copy_file(str(Path(__file__).parent / PTH), str(destination / PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


setup(cmdclass={"build_py": build_py_with_pth})
