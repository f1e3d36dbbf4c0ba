"""The plugin library's identity: build records it, run loads the same and refuses another."""

import shutil

import pytest

from luvc.cli.main import main
from luvc.engines.plugin_library import PluginLibrary, plugin_library_for_run
from luvc.errors import LuvcError
from luvc.models import load_model

trt_module = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")


@pytest.mark.slow
def test_build_refuses_what_tensorrt_rtx_cannot_build(plugin_library, tmp_path, capsys):
    from luvc.export.exporter import export_model

    adapter = load_model("tiny-llava")
    adapter.apply_luvc()
    plugged = export_model(adapter, tmp_path / "plugged", show_progress=False, plugin_nodes=True)
    args = ["build", str(plugged), "--target", "ampere", "--out", str(tmp_path / "engines")]
    assert main([*args, "--plugin-library", str(plugin_library)]) == 2
    assert "has no plugin layers; build it with full TensorRT (--tensorrt-module tensorrt" in capsys.readouterr().err
    assert not (tmp_path / "engines").exists()


@pytest.fixture
def plugin_library(tmp_path):
    """A file standing for a built library: identity checks read its bytes, never load it."""
    path = tmp_path / "libluvc_trt_plugins.so"
    path.write_bytes(b"\x7fELF" + bytes(range(256)))
    return path


def test_run_loads_only_the_library_the_engines_were_built_with(plugin_library, tmp_path):
    recorded = PluginLibrary.of(plugin_library)
    moved = shutil.copy(plugin_library, tmp_path / "moved.so")
    assert plugin_library_for_run(recorded, moved).sha256 == recorded.sha256  # same bytes, new place
    other = tmp_path / "other.so"
    other.write_bytes(plugin_library.read_bytes() + b"\0")
    with pytest.raises(LuvcError, match="is not the one these engines were built with"):
        plugin_library_for_run(recorded, other)
    gone = PluginLibrary(str(tmp_path / "gone.so"), recorded.sha256)
    with pytest.raises(LuvcError, match="which is not there; pass its new place with --plugin-library"):
        plugin_library_for_run(gone, None)
    with pytest.raises(LuvcError, match="built without a plugin library; drop --plugin-library"):
        plugin_library_for_run(None, plugin_library)
