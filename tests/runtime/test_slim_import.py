import subprocess
import sys


def test_runtime_imports_neither_torch_nor_transformers():
    code = (
        "import sys, pard_export.runtime, pard_export.cli; "
        "heavy = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
