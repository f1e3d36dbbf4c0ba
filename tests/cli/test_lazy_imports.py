import subprocess
import sys


def test_build_command_does_not_import_pytorch_or_transformers():
    """Jetson users build engines with JetPack's TensorRT; the build path must not need PyTorch."""
    code = (
        "import sys\n"
        "from luvc.cli.main import build_parser\n"
        "parser, tools = build_parser(['build'])\n"
        "assert list(tools) == ['build']\n"
        "import luvc.engines.builder, luvc.engines.profiles\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
