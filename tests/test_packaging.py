import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_package_imports_with_torch_alone():
    code = (
        "import sys; import training.nn, training.nn.attention; "
        "heavy = {'mlflow', 'optuna', 'sklearn', 'pandas', 'matplotlib'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
