"""The package's own module: its public names load on first use (PEP 562), so importing a light
module (the configuration, the errors) loads none of the training machinery (issue 26).

Each import is measured in a fresh interpreter, since this one has imported everything already.
"""

import json
import subprocess
import sys

import pytest

import pyro_vae

# the subpackages a light import must leave alone: the trainer, the run folder, the command line
HEAVY = ("pyro_vae.training", "pyro_vae.runs", "pyro_vae.cli")


def loaded_after(statement: str) -> list[str]:
    """The pyro_vae modules in sys.modules after ``statement`` in a fresh interpreter."""
    script = (
        f"import json, sys\n{statement}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'pyro_vae')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("statement", ["import pyro_vae", "import pyro_vae.errors"])
def test_importing_the_package_loads_no_subpackage(statement):
    assert set(loaded_after(statement)) <= {"pyro_vae", "pyro_vae.errors", "pyro_vae.version"}


def test_importing_the_configuration_loads_no_training_module():
    modules = loaded_after("import pyro_vae.config")
    assert "pyro_vae.config" in modules  # the probe sees what it is meant to
    assert [m for m in modules if m.startswith(HEAVY)] == []


def test_every_public_name_loads_on_first_use():
    script = "from pyro_vae import *\nimport pyro_vae\nprint(sorted(pyro_vae.__all__))"
    loaded = loaded_after(script)
    assert "pyro_vae.training.trainer" in loaded and "pyro_vae.runs.folder" in loaded
    for name in pyro_vae.__all__:
        assert getattr(pyro_vae, name) is not None
        assert name in dir(pyro_vae)
    from pyro_vae import VAE, Run, train  # noqa: F401  (the names import as before)

    assert pyro_vae.data.sources.Dataset is pyro_vae.Dataset  # a subpackage, as an attribute
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        pyro_vae.nothing  # noqa: B018
