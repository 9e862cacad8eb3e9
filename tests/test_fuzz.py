import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fuzz_dumps.py"


def test_damaged_dumps_never_crash_or_hang_the_analyzer():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cases", "150", "--seed", "3"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 failures" in proc.stdout
