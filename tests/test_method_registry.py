"""The one method registry (``easytune.methods.registry``): specs, options, agreement with the classes'
constructors and with the docs table, and no torch import for the command line."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from easytune import methods
from easytune.errors import ConfigError
from easytune.methods import registry

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("entry", registry.METHODS, ids=lambda m: m.name)
def test_every_entry_matches_its_class_constructor(entry):
    cls = entry.load()
    assert cls.__name__ == entry.label and getattr(methods, entry.label) is cls
    params = inspect.signature(cls.__init__).parameters
    for opt in entry.options:
        assert opt.name in params, (entry.name, opt.name)
    if entry.count is not None:
        assert entry.count in entry.option_names and params[entry.count].default >= 1
        default = params[entry.count].default
        built = methods.from_spec(f"{entry.name}-{default}")
        assert repr(built) == repr(cls())  # the spec with the default count is the default method
    # Every constructor argument the command line cannot set is a documented exception.
    assert set(params) - {"self"} - set(entry.option_names) <= {"checkpoint"}


def test_specs_build_the_method_with_its_count():
    assert methods.from_spec("draft-50").k == 50
    assert methods.from_spec("easytune-3", weighting="early").weighting == "early"
    assert methods.from_spec("EasyTune-3").k == 3 and methods.from_spec("DRaFT-LV-4").n == 4
    assert methods.from_spec("draftlv-2").n == 2 and methods.from_spec("refl-7").m == 7
    assert type(methods.from_spec("draft-lv")).__name__ == "DRaFTLV"
    assert registry.parse_spec("drtune-5") == ("drtune", 5)
    for bad, message in [
        ("dpo-3", "method must be one of"),
        ("alignprop-3", "alignprop takes no count"),
        ("draft-0", "count must be >= 1"),
        ("draft-x", "method must be one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            methods.from_spec(bad)
    with pytest.raises(ConfigError, match="sets k=3, the options 4"):
        methods.from_spec("draft-3", k=4)
    with pytest.raises(ConfigError, match="--weighting does not apply to --method draft"):
        methods.build("draft", weighting="early")


def test_the_docs_table_lists_every_method_with_its_options():
    text = (ROOT / "docs" / "methods.md").read_text()
    for entry in registry.METHODS:
        spec = f"`{entry.name}-{entry.count.upper()}`" if entry.count else f"`{entry.name}`"
        row = next((line for line in text.splitlines() if line.startswith(f"| {spec} |")), None)
        assert row is not None, spec
        assert f"`{entry.label}`" in row and all(f"`--{o}`" in row for o in entry.option_names), row


def test_the_command_line_reads_the_registry_without_importing_torch():
    code = (
        "import sys; import easytune.cli as c; c.build_parser(); "
        "from easytune.methods import registry; registry.parse_spec('draft-5'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
